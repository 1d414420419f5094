"""The two-tower model: the residual start equals SigLIP, conditioning is per group and set-invariant."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encoder_fakes import perturb_hyper

from hyperclip_jax import config as config_lib
from hyperclip_jax import losses
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")


def _config(variant):
  return config_lib.load_config(f"{DEMO}:tiny=true,variant={variant}")


def _batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (n, config.data.image_size, config.data.image_size, 3)).astype(np.float32)
  vocab = tokenizers.get_tokenizer(config.data.tokenizer).vocab_size
  tokens = rng.integers(4, vocab, (n, config.data.max_len)).astype(np.int32)
  tokens[:, 12:] = 0  # padding after 12 tokens
  return jnp.asarray(images), jnp.asarray(tokens)


@pytest.fixture(scope="module")
def models():
  out = {}
  for variant in ("siglip", "hyperclip", "token"):
    model = two_towers.build_model(_config(variant))
    out[variant] = (model, model.init(jax.random.PRNGKey(0)))
  return out




@pytest.mark.parametrize("train", [False, True])
def test_hyperclip_at_init_equals_siglip(models, train):
  siglip, v_s = models["siglip"]
  hyper, v_h = models["hyperclip"]
  shared = {k: v_h["params"][k] for k in ("img", "txt", "t", "b")}
  images, tokens = _batch(_config("siglip"))
  z_s, t_s, _ = siglip({**v_s["params"], **shared}, v_h["batch_stats"], images, tokens, train=train)
  z_h, t_h, _ = hyper(v_h["params"], v_h["batch_stats"], images, tokens, train=train)
  np.testing.assert_array_equal(np.asarray(t_s), np.asarray(t_h))
  np.testing.assert_allclose(np.asarray(z_s), np.asarray(z_h), atol=1e-6)


def test_nonzero_head_gives_per_group_embeddings(models):
  hyper, v = models["hyperclip"]
  params = perturb_hyper(v["params"])
  images, tokens = _batch(_config("hyperclip"))  # 8 pairs = 2 groups of set_size 4
  images = jnp.concatenate([images[:4], images[:4]])  # the same images in both groups
  z, _, _ = hyper(params, v["batch_stats"], images, tokens, train=False)
  assert float(jnp.abs(z[:4] - z[4:]).max()) > 1e-3  # different text sets -> different image embeddings
  siglip_like, _, _ = hyper(v["params"], v["batch_stats"], images, tokens, train=False)
  np.testing.assert_allclose(np.asarray(siglip_like[:4]), np.asarray(siglip_like[4:]), atol=1e-6)


def test_generated_params_are_a_set_function(models):
  hyper, v = models["hyperclip"]
  params = perturb_hyper(v["params"])
  _, tokens = _batch(_config("hyperclip"))
  ztxt = hyper.encode_text(params, tokens)[None, :4]  # [1, 4, D]
  perm = ztxt[:, ::-1]
  a, b = hyper.generate(params, ztxt), hyper.generate(params, perm)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
  assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(a)) > 1e-3


def test_token_variant_ignores_texts(models):
  model, v = models["token"]
  params = perturb_hyper(v["params"])
  images, tokens = _batch(_config("token"))
  z1, _, _ = model(params, v["batch_stats"], images, tokens, train=False)
  z2, _, _ = model(params, v["batch_stats"], images, jnp.roll(tokens, 1, axis=0), train=False)
  np.testing.assert_allclose(np.asarray(z1), np.asarray(z2), atol=1e-6)


def test_gradients_reach_all_three_parts(models):
  model, v = models["hyperclip"]
  params = perturb_hyper(v["params"], scale=0.05)
  images, tokens = _batch(_config("hyperclip"))

  @jax.jit
  def grads(params):
    def loss(p):
      zimg, ztxt, _ = model(p, v["batch_stats"], images, tokens, train=True)
      return losses.sigmoid_loss(zimg, ztxt, p["t"], p["b"])
    return jax.grad(loss)(params)

  g = grads(params)
  for part in ("img", "txt", "hyper"):
    leaves = jax.tree_util.tree_leaves(g[part])
    assert all(bool(jnp.isfinite(l).all()) for l in leaves), part
    assert sum(float(jnp.abs(l).sum()) for l in leaves) > 0, part


def test_generated_shape_mismatch_is_a_clear_error(models):
  model, v = models["hyperclip"]
  images, _ = _batch(_config("hyperclip"), n=4)
  template = model.generated_template()
  bad = jax.tree.map(lambda s: jnp.zeros((3, s.shape[0] + 1)), template)
  with pytest.raises(ValueError, match="generated norm param"):
    model.encode_image(v["params"], v["batch_stats"], images, bad)


def test_empty_set_is_a_clear_error(models):
  model, v = models["hyperclip"]
  with pytest.raises(ValueError, match="non-empty set"):
    model.generate(v["params"], jnp.zeros((1, 0, model.embed_dim)))


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "mobilenetv3_small_100"])
def test_other_encoder_families_train_in_the_two_tower_model(encoder):
  config = config_lib.load_config(f"{DEMO}:tiny=true,encoder={encoder}")
  if encoder.startswith("vit"):  # a 4-head, 1-block ViT (LayerNorms only: no batch_stats)
    config.model.image.width_mult, config.model.image.depth_mult = 0.34, 0.1
  model = two_towers.build_model(config)
  v = model.init(jax.random.PRNGKey(0))
  images, tokens = _batch(config)
  step = jax.jit(lambda p, b: model(p, b, images, tokens, train=True))
  zimg, ztxt, batch_stats = step(perturb_hyper(v["params"], scale=0.05), v["batch_stats"])
  assert zimg.shape == ztxt.shape == (8, config.model.embed_dim)
  assert bool(jnp.isfinite(zimg).all())
  assert jax.tree_util.tree_structure(batch_stats) == jax.tree_util.tree_structure(v["batch_stats"])
