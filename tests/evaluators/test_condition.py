"""Zero-shot `condition`: the hypernet reads each task's class set (default) or one fixed set of training captions."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from hyperclip_jax import config as config_lib
from hyperclip_jax import evaluators, sharding
from hyperclip_jax.data import sources, tokenizers
from hyperclip_jax.models import two_towers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def _config(condition: str) -> ml_collections.ConfigDict:
  config = config_lib.load_config(f"{DEMO}:tiny=true")
  config.evals = ml_collections.ConfigDict(dict(zeroshot=dict(
      type="zeroshot", data=dict(name="demo", tasks="colour"), n_eval=16, batch_size=16,
      condition=condition)))
  return config


def test_train_captions_condition_on_the_first_set_size_training_captions():
  config = _config("train_captions")
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)  # perturbed, so that the hypernet's output depends on its input set
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(p.dtype), variables["params"])
  evaluator = evaluators.build(config, model, tokenizers.get_tokenizer(config.data.tokenizer),
                               sharding.make_mesh(config.mesh))
  zs = evaluator.parts[0][1]
  source = sources.get_source(config.data, 0)
  assert zs.condition_texts == [source[i]["caption"] for i in range(config.model.hyper.set_size)]
  seen = []  # the sets the hypernet reads
  generate = zs._generate
  zs._generate = lambda p, z: seen.append(np.asarray(z)) or generate(p, z)
  by_captions = zs.run_task(params, variables["batch_stats"], zs.tasks[0])
  zs.condition_texts = None  # what condition='classes' builds: the same evaluator, conditioned on the class set
  by_classes = zs.run_task(params, variables["batch_stats"], zs.tasks[0])
  assert [z.shape[:2] for z in seen] == [(1, config.model.hyper.set_size), (1, 8)]  # 8 colour classes
  expect = zs.class_embeddings(params, zs.tasks[0].class_names, zs.tasks[0].templates)
  np.testing.assert_allclose(seen[1][0], expect, atol=1e-6)
  assert not np.allclose(seen[0][0, :1], seen[1][0, :1], atol=1e-3)
  assert by_captions["num_images"] == by_classes["num_images"] == 16


def test_unknown_condition_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.zeroshot.condition='tasks' is unknown; known: "
                                                   "classes, train_captions"):
    evaluators.validate(_config("tasks"))
