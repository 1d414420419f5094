"""Zero-shot recalibrate_bn=N: each task's BatchNorm running stats re-estimated under its Θ' over N held-out
training images; nothing else changes."""
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from hyperclip_jax import config as config_lib
from hyperclip_jax import evaluators, sharding
from hyperclip_jax.data import input_pipeline, sources, tokenizers
from hyperclip_jax.evaluators import recalibrate
from hyperclip_jax.models import layers, two_towers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def _config(variant="hyperclip", **extra) -> ml_collections.ConfigDict:
  config = config_lib.load_config(f"{DEMO}:tiny=true,variant={variant}")
  config.evals = ml_collections.ConfigDict(dict(zeroshot=dict(
      type="zeroshot", data=dict(name="demo", tasks="colour,shape"), n_eval=16, batch_size=16, **extra)))
  return config


def _setup(config, seed=0):
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)  # perturbed, so that the hypernet's output depends on its input set
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(p.dtype), variables["params"])
  zs = evaluators.build(config, model, tokenizers.get_tokenizer(config.data.tokenizer),
                        sharding.make_mesh(config.mesh)).parts[0][1]
  return model, params, variables["batch_stats"], zs


def _hand_stats(model, params, batch_stats, images, generated, batch):
  """Every BatchNorm's input captured in a train-mode forward per batch (one group, batch statistics), then its
  mean and variance over all images, by numpy: {path: (mean, var)}."""
  inputs = {}

  def capture(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, layers.ConditionedNorm) and module.kind == "batch" and context.method_name == "__call__":
      x = np.asarray(args[0], np.float64)
      inputs.setdefault(tuple(module.path), []).append(x.reshape(-1, x.shape[-1]))
    return next_fun(*args, **kwargs)

  variables = {"params": params["img"], "batch_stats": batch_stats["img"]}
  if generated is not None:
    variables[layers.GENERATED] = generated
  for start in range(0, len(images), batch):
    x = input_pipeline.to_model_image(images[start:start + batch])[None]
    with nn.intercept_methods(capture):
      model.image.apply(variables, x, train=True, mutable=["batch_stats"])
  return {path: (np.concatenate(xs).mean(0), np.concatenate(xs).var(0)) for path, xs in inputs.items()}


def _assert_stats(stats, want):
  """stats (batch_stats['img']) against _hand_stats: the first BatchNorm (the stem's, its input Θ'-free) to
  float32 precision; deeper ones to 1e-3 of their input's scale (float32 rounding through the layers, and the
  E[x²] - E[x]² of a channel whose variance is ~0, as in training)."""
  flat = traverse_util.flatten_dict(stats)
  assert len(want) == len(flat) // 2 > 3
  for path, (mean, var) in want.items():
    scale = 1e-6 if path[-2:] == ("stem", "bn") else 1e-3
    np.testing.assert_array_less(np.abs(flat[path + ("mean",)] - mean), scale * (np.abs(mean) + np.sqrt(var)) + 1e-7,
                                 err_msg=str(path))
    np.testing.assert_array_less(np.abs(flat[path + ("var",)] - var), scale * (var + mean * mean) + 1e-7,
                                 err_msg=str(path))


def _copy(tree):
  return jax.tree.map(np.array, tree)


def _same(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_zero_is_todays_evaluator_and_names():
  _, params, batch_stats, zs = _setup(_config(recalibrate_bn=0))
  assert zs.recalibrator is None
  results = zs.run(params, batch_stats)
  assert list(results) == ["colour", "shape"]
  _, _, _, plain = _setup(_config())  # the key left out: the same evaluator, the same numbers
  assert plain.run(params, batch_stats) == results


def test_recalibrated_stats_are_the_mean_and_variance_over_the_heldout_images_under_each_tasks_theta():
  config = _config(recalibrate_bn=32)  # two batches of 16
  model, params, batch_stats, zs = _setup(config)
  images = recalibrate.heldout_images(config, 32)
  np.testing.assert_array_equal(zs.recalibrator.images, images)
  assert zs.recalibrator.batch == 16
  train = sources.get_source(config.data, config.seed)  # the stream training reads: not these images
  assert not any(np.array_equal(images[i], train[i]["image"]) for i in range(4))

  used = []  # (batch_stats, generated) of every test batch the image tower embeds
  embed, generate = zs._embed_images, zs._generate
  zs._embed_images = lambda p, bs, x, g: used.append((bs, g)) or embed(p, bs, x, g)
  theta = []
  zs._generate = lambda p, z: theta.append(generate(p, z)) or theta[-1]
  before = _copy((params, batch_stats))
  recal = zs.run(params, batch_stats)
  assert list(recal) == ["colour_bn32", "shape_bn32"]
  assert _same(before, (params, batch_stats))  # the caller's params and stats are untouched

  checked = 0
  for task_theta, (stats, g) in zip(theta, used):  # one test batch per task (n_eval = batch_size)
    assert g is task_theta  # the image tower runs under the task's own Θ', unchanged
    want = _hand_stats(model, params, batch_stats, images, task_theta, 16)
    _assert_stats(stats["img"], want)
    checked += 1
  assert len(used) == checked == 2
  # each task's Θ' gives its own stats (the stem's input is Θ'-free: the same for both, and new)
  flat0, flat1 = (traverse_util.flatten_dict(s["img"]) for s, _ in used)
  stem = ("encoder", "stem", "bn", "mean")
  np.testing.assert_array_equal(flat0[stem], flat1[stem])
  assert not np.allclose(flat0[stem], traverse_util.flatten_dict(batch_stats["img"])[stem], atol=1e-2)
  assert any(not np.allclose(flat0[k], flat1[k], rtol=1e-3) for k in flat0)

  plain = _setup(_config())[3].run(params, batch_stats)  # the same images and classes; only the stats differ
  for task in plain:
    assert {k: v for k, v in plain[task].items() if not k.startswith("top")} == \
        {k: v for k, v in recal[task + "_bn32"].items() if not k.startswith("top")}
  task = zs.tasks[0]
  zcls = np.asarray(zs.class_embeddings(params, task.class_names, task.templates)).T
  logits = [np.concatenate([z for z, _ in zs._embedded_batches(params, s, task, theta[0])]) @ zcls
            for s in (batch_stats, used[0][0])]
  assert np.abs(logits[0] - logits[1]).max() > 1e-2


def test_siglip_recalibrates_under_its_own_norm_params_and_wrong_task_under_the_other_tasks_theta():
  config = _config("siglip", recalibrate_bn=16)
  model, params, batch_stats, zs = _setup(config)
  images = recalibrate.heldout_images(config, 16)
  new = zs.recalibrator(params, batch_stats, None)
  want = _hand_stats(model, params, batch_stats, images, None, 16)
  _assert_stats(new["img"], want)
  assert set(zs.run(params, batch_stats)) == {"colour_bn16", "shape_bn16"}

  config = _config(recalibrate_bn=16, condition="wrong_task")
  model, params, batch_stats, zs = _setup(config)
  used = []
  embed = zs._embed_images
  zs._embed_images = lambda p, bs, x, g: used.append((bs, g)) or embed(p, bs, x, g)
  zs.run(params, batch_stats)
  other = zs.tasks[1]  # colour is conditioned on shape's classes, and recalibrated under that Θ'
  zother = zs.class_embeddings(params, other.class_names, other.templates)
  theta = model.generate_mean(params, zother[None])
  want = _hand_stats(model, params, batch_stats, images, theta, 16)
  _assert_stats(used[0][0]["img"], want)


@pytest.mark.parametrize("value, match", [
    (-1, r"config.evals.zeroshot.recalibrate_bn=-1 must be 0 \(off\), at most batch_size=16, or a multiple of it"),
    (24, r"config.evals.zeroshot.recalibrate_bn=24 must be 0 \(off\), at most batch_size=16, or a multiple of it"),
    (1.5, r"config.evals.zeroshot.recalibrate_bn=1.5 must be a int"),
    (True, r"config.evals.zeroshot.recalibrate_bn=True must be a int"),
])
def test_bad_values_are_one_line_config_errors(value, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    evaluators.validate(_config(recalibrate_bn=value))


def test_non_demo_training_data_and_undividable_batches_are_refused_at_build():
  config = _config(recalibrate_bn=16)
  config.data.name = "manifest"
  with pytest.raises(ValueError, match=r"config.evals.zeroshot: recalibrate_bn needs held-out training images, "
                                       r"which only the demo source provides so far; config.data.name='manifest'"):
    _setup(config)
  with pytest.raises(ValueError, match=r"config.evals.zeroshot: recalibrate_bn: batches of 4 held-out images do "
                                       r"not split over 8 devices"):
    _setup(_config(recalibrate_bn=4))


def test_a_command_line_override_reaches_the_setting_the_config_left_at_its_default():
  config = _config()
  config.lock()
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.zeroshot.recalibrate_bn is unknown"):
    config_lib.apply_override(config, "evals.zeroshot.recalibrate_bn", "32")
  evaluators.fill_defaults(config)  # what hyperclip-eval does before its --config.* overrides
  config_lib.apply_override(config, "evals.zeroshot.recalibrate_bn", "32")
  kind, s = evaluators.settings_of("zeroshot", config.evals.zeroshot)
  assert kind == "zeroshot" and s["recalibrate_bn"] == 32 and s["condition"] == "classes" and s["n_eval"] == 16
  assert "data" in config.evals.zeroshot and config.evals.zeroshot.data.tasks == "colour,shape"
  evaluators.validate(config)
