"""The linear / conv capacity controls: SigLIP at step 0, the update is W + U_g V_gᵀ per group, it folds at export,
and a train step moves it."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from encoder_fakes import perturb_hyper

from hyperclip_jax import config as config_lib
from hyperclip_jax import export, optim, sharding, train, validation
from hyperclip_jax import state as state_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import conv as conv_lib
from hyperclip_jax.models import layers, lowrank, two_towers

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")
VARIANTS = ("linear", "conv")


def _config(variant, **overrides):
  config = config_lib.load_config(f"{DEMO}:tiny=true,variant={variant}")
  for k, v in overrides.items():
    config_lib.apply_override(config, k, str(v))
  return config


def _batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (n, config.data.image_size, config.data.image_size, 3)).astype(np.float32)
  vocab = tokenizers.get_tokenizer(config.data.tokenizer).vocab_size
  tokens = rng.integers(4, vocab, (n, config.data.max_len)).astype(np.int32)
  tokens[:, 12:] = 0
  return jnp.asarray(images), jnp.asarray(tokens)


@pytest.fixture(scope="module")
def models():
  out = {}
  for variant in ("siglip",) + VARIANTS:
    model = two_towers.build_model(_config(variant))
    out[variant] = (model, model.init(jax.random.PRNGKey(0)))
  return out




def test_targets_and_rank(models):
  linear, v_l = models["linear"]
  conv, v_c = models["conv"]
  config = _config("linear")
  assert linear.lowrank.path == ("head",) and linear.lowrank.cout == config.model.embed_dim
  assert conv.lowrank.path[-2:] == ("head", "conv")  # EfficientNet's head conv: the last 1x1 conv
  assert config.model.hyper_rank == 32 and linear.hyper_rank == 32
  assert v_l["params"]["lowrank"]["v0"].shape == (config.model.embed_dim, 32)
  assert v_c["params"]["lowrank"]["v0"].shape == (conv.lowrank.cout, 32)
  assert linear.hyper.shapes == ((linear.lowrank.cin, 32), (linear.lowrank.cout, 32))


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_at_init_equals_siglip(models, variant, train_mode):
  siglip, v_s = models["siglip"]
  model, v = models[variant]
  shared = {k: v["params"][k] for k in ("img", "txt", "t", "b")}
  images, tokens = _batch(_config("siglip"))
  z_s, t_s, bs_s = siglip({**v_s["params"], **shared}, v["batch_stats"], images, tokens, train=train_mode)
  z_v, t_v, bs_v = model(v["params"], v["batch_stats"], images, tokens, train=train_mode)
  np.testing.assert_array_equal(np.asarray(t_s), np.asarray(t_v))
  np.testing.assert_allclose(np.asarray(z_s), np.asarray(z_v), atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), bs_s, bs_v)


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_is_the_layer_with_kernel_w_plus_uv_per_group(models, variant):
  model, v = models[variant]
  params = perturb_hyper(v["params"])
  images, tokens = _batch(_config(variant))
  g, s = 2, model.set_size
  ztxt = model.encode_text(params, tokens).reshape(g, s, -1)
  fac = model.generate(params, ztxt)
  assert fac["u"].shape == (g, model.lowrank.cin, 32) and float(jnp.abs(fac["u"]).max()) > 1e-3
  grouped = images.reshape((g, s) + images.shape[1:])
  got, _ = model.encode_image(params, v["batch_stats"], grouped, fac)
  plain, _ = model.encode_image(params, v["batch_stats"], grouped)
  for i in range(g):
    one = {"u": fac["u"][i:i + 1], "v": fac["v"][i:i + 1]}
    img = lowrank.fold_into(params["img"], one, model.lowrank)
    want, _ = model.encode_image({**params, "img": img}, v["batch_stats"], grouped[i])
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(got[i] - plain[i]).max()) > 1e-3  # the update does something
  mean = model.generate_mean(params, ztxt)  # one update of rank g·r: the mean of the g updates U_g V_gᵀ
  assert mean["u"].shape == (1, model.lowrank.cin, g * 32)
  want = np.mean([np.asarray(fac["u"][i] @ fac["v"][i].T) for i in range(g)], axis=0)
  np.testing.assert_allclose(np.asarray(mean["u"][0] @ mean["v"][0].T), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("sets", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_folded_classifier_matches_the_conditioned_model(models, variant, sets):
  model, v = models[variant]
  params = perturb_hyper(v["params"], scale=0.2)
  rng = np.random.default_rng(3)
  batch_stats = jax.tree.map(  # running statistics away from (0, 1), so the BatchNorm fold is exercised too
      lambda x: jnp.asarray(x + rng.uniform(0.2, 0.5, x.shape).astype(np.float32)), v["batch_stats"])
  _, tokens = _batch(_config(variant), n=8, seed=1)
  zcls = np.asarray(model.encode_text(params, tokens[:5]))  # 5 classes
  zsets = None if sets == 1 else model.encode_text(params, tokens).reshape(sets, 4, -1)
  folded, logits = export.fold_classifier(model, params, batch_stats, zcls, zsets)
  images = rng.integers(0, 256, (6, model.image_size, model.image_size, 3), dtype=np.uint8)
  x = jnp.asarray(images, jnp.float32) * (2 / 255) - 1
  ref = np.asarray(export.unfolded_logits(model, params, batch_stats, zcls, x, zsets))
  got = np.asarray(logits(folded, jnp.asarray(images)))
  t, b = float(np.exp(params["t"])), float(params["b"])
  cos_ref, cos_got = (ref - b) / t, (got - b) / t
  np.testing.assert_allclose(cos_got, cos_ref, atol=1e-4 * np.abs(cos_ref).max())
  assert np.std(cos_ref) > 1e-3
  # the folded weights carry the update: without it the logits differ
  plain = np.asarray(export.unfolded_logits(model, {**params, "hyper": v["params"]["hyper"]}, batch_stats, zcls, x))
  assert np.abs((plain - b) / t - cos_ref).max() > 1e-3


@pytest.mark.parametrize("variant,scope", [("linear", "batch"), ("conv", "group")])
def test_train_step_moves_the_update(variant, scope):
  config = _config(variant, **{"optim.schedule.warmup_steps": 0})
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(0)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps, jax.eval_shape(model.init, rng)["params"])
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  state = state_lib.init_state(model, tx, rng, mesh)
  step = jax.jit(train.make_train_step(model, tx, config.loss.name, schedule, mesh=mesh, loss_scope=scope))
  images, tokens = _batch(config, n=config.batch_size)
  new, metrics = step(state, {"image": images, "text": tokens}, jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["train/loss"]))
  head = lambda p: np.asarray(p["hyper"]["head"]["kernel"])
  assert np.abs(head(new["params"]) - head(state["params"])).max() > 0  # U's generator left zero
  groups = tokens.reshape(-1, model.set_size, tokens.shape[-1])[:1]
  fac = model.generate(new["params"], model.encode_text(new["params"], groups[0])[None])
  assert float(jnp.abs(fac["u"]).max()) > 0


def test_conv_variant_needs_a_1x1_conv_and_rank_must_be_positive():
  class NoPointwise(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = conv_lib.Conv(8, 3, 2)(layers.group_images(x, 8, "toy")[0])
      return nn.Dense(4, name="head")(x.mean((-3, -2)))
  with pytest.raises(ValueError, match=r"variant='conv' needs a 1x1, stride-1 convolution"):
    lowrank.find_target(NoPointwise(), "conv", 16)
  assert lowrank.find_target(NoPointwise(), "linear", 16) == lowrank.Target(("head",), 8, 4)
  config = _config("linear")
  config_lib.apply_override(config, "model.hyper_rank", "0")
  with pytest.raises(config_lib.ConfigError, match=r"config.model.hyper_rank=0 must be a positive int"):
    validation.validate(config, 1)
  config = _config("linear")
  config_lib.apply_override(config, "loss.scope", "pairs")
  with pytest.raises(config_lib.ConfigError, match=r"config.loss.scope='pairs' is unknown; known: batch, group"):
    validation.validate(config, 1)
