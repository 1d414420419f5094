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


def _config(condition: str, **extra) -> ml_collections.ConfigDict:
  config = config_lib.load_config(f"{DEMO}:tiny=true")
  config.evals = ml_collections.ConfigDict(dict(zeroshot=dict(
      type="zeroshot", data=dict(name="demo", tasks="colour"), n_eval=16, batch_size=16,
      condition=condition, **extra)))
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


def test_train_sets_mean_averages_the_norm_params_of_consecutive_caption_sets():
  config = _config("train_sets_mean", condition_sets=3)
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(p.dtype), variables["params"])
  zs = evaluators.build(config, model, tokenizers.get_tokenizer(config.data.tokenizer),
                        sharding.make_mesh(config.mesh)).parts[0][1]
  k = config.model.hyper.set_size
  source = sources.get_source(config.data, 0)
  assert zs.condition_texts == [source[i]["caption"] for i in range(3 * k)] and zs.condition_sets == 3
  used = []  # the norm params the image tower runs with
  embed = zs._embed_images
  zs._embed_images = lambda p, bs, images, generated: used.append(generated) or embed(p, bs, images, generated)
  zs.run_task(params, variables["batch_stats"], zs.tasks[0])
  z = zs.class_embeddings(params, zs.condition_texts, ["{}"]).reshape(3, k, -1)
  per_set = [model.generate(params, z[i:i + 1]) for i in range(3)]
  want = jax.tree.map(lambda *leaves: np.mean(np.stack(leaves), 0), *per_set)
  got = used[0]
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w, a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(per_set[0]),
                        jax.tree.leaves(per_set[1])):
    assert g.shape == w.shape == a.shape and g.shape[0] == 1
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(per_set[0]), jax.tree.leaves(per_set[1]))) > 1e-3


def test_unknown_condition_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.zeroshot.condition='tasks' is unknown; known: "
                                                   "classes, train_captions, train_sets_mean"):
    evaluators.validate(_config("tasks"))
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.zeroshot.condition_sets=0 must be at least 1"):
    evaluators.validate(_config("train_sets_mean", condition_sets=0))


def test_wrong_task_conditions_each_task_on_the_next_tasks_classes_and_changes_nothing_else():
  config = _config("wrong_task")
  config.evals.zeroshot.data.tasks = "colour,position,shape"
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(p.dtype), variables["params"])
  tokenizer, mesh = tokenizers.get_tokenizer(config.data.tokenizer), sharding.make_mesh(config.mesh)
  zs = evaluators.build(config, model, tokenizer, mesh).parts[0][1]
  assert [t.name for t in zs.tasks] == ["colour", "position", "shape"] and zs.wrong_task
  seen = []  # the sets the hypernet reads, in task order
  generate = zs._generate
  zs._generate = lambda p, z: seen.append(np.asarray(z)) or generate(p, z)
  wrong = zs.run(params, variables["batch_stats"])
  for z, other in zip(seen, zs.tasks[1:] + zs.tasks[:1]):
    np.testing.assert_allclose(z[0], zs.class_embeddings(params, other.class_names, other.templates), atol=1e-6)
  zs.wrong_task, seen[:] = False, []
  right = zs.run(params, variables["batch_stats"])
  assert [z.shape[1] for z in seen] == [len(t.class_names) for t in zs.tasks]  # each task's own classes
  for name in right:  # the same images and classes: only the conditioning differs
    assert {k: v for k, v in wrong[name].items() if not k.startswith("top")} == \
        {k: v for k, v in right[name].items() if not k.startswith("top")}
  assert any(wrong[t]["top1"] != right[t]["top1"] for t in right)

  config.model.variant = "siglip"  # no hypernetwork: nothing to condition, the same numbers
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(0))
  zs = evaluators.build(config, model, tokenizer, mesh).parts[0][1]
  wrong = zs.run(variables["params"], variables["batch_stats"])
  zs.wrong_task = False
  assert zs.run(variables["params"], variables["batch_stats"]) == wrong


def test_wrong_task_needs_two_tasks():
  config = _config("wrong_task")  # one task: colour
  model = two_towers.build_model(config)
  with pytest.raises(ValueError, match="condition='wrong_task' needs at least two tasks"):
    evaluators.build(config, model, tokenizers.get_tokenizer(config.data.tokenizer), sharding.make_mesh(config.mesh))
