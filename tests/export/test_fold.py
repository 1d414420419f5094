"""Folding eval-mode norms and generated params into static weights: same outputs, no BatchNorm left."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax import models
from hyperclip_jax.models import fold, two_towers

CNNS = [n for n in models.image_encoder_names() if not n.startswith("vit")]
TINY = {"width_mult": 0.1, "depth_mult": 0.2}


def _random_variables(module, images, seed=0):
  """Random weights, BatchNorm statistics and generated params (one set, leaves [1, C])."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    col, leaf = path[0].key, path[-1].key
    if col == "generated":
      return (0.3 * rng.normal(size=(1,) + s.shape)).astype(np.float32)
    if leaf == "kernel":
      return rng.normal(0, 1 / math.sqrt(math.prod(s.shape[:-1])), s.shape).astype(np.float32)
    if leaf == "var":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if leaf == "mean":
      return (0.2 * rng.normal(size=s.shape)).astype(np.float32)
    return ((leaf == "scale") + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _fold_and_compare(name, norm_mode="residual"):
  tower = two_towers.ImageTower(models.build_image_encoder(name, norm_mode=norm_mode, **TINY), embed_dim=16)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3), minval=-1, maxval=1)
  variables = _random_variables(tower, images)
  ref = jax.jit(lambda v, x: tower.apply(v, x, train=False))(variables, images)
  norms = fold.trace_norms(tower, variables, 32)
  folded = fold.fold(norms, variables)
  run = lambda f, x: fold.apply_folded(tower, norms, f, x)
  out = jax.jit(run)(folded, images)
  err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
  return norms, folded, err, str(jax.make_jaxpr(run)(folded, images))


@pytest.mark.parametrize("name", CNNS)
def test_folded_cnn_matches_unfolded_and_has_no_batchnorm(name):
  norms, folded, err, jaxpr = _fold_and_compare(name)
  assert err <= 1e-4, f"{name}: relative error {err:.2e}"
  assert len(norms) >= 10 and all(n.kind == "batch" and n.conv is not None for n in norms)
  paths = ["/".join(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(folded)]
  assert not any(p.endswith(("/mean", "/var")) for p in paths)
  assert not any("/".join(n.path) in p for n in norms for p in paths)  # norm params are gone
  assert all("/".join(n.conv) + "/bias" in paths for n in norms)  # ... and live on as conv biases
  assert "rsqrt" not in jaxpr  # no normalisation left in the folded forward


def test_folded_cnn_in_replace_mode_matches():
  _, _, err, _ = _fold_and_compare("efficientnet_b0", norm_mode="replace")
  assert err <= 1e-4


def test_folded_vit_keeps_layernorm_with_generated_params_baked_in():
  norms, folded, err, jaxpr = _fold_and_compare("vit_tiny_patch16_224")
  assert err <= 1e-4
  assert norms and all(n.kind == "layer" for n in norms)
  assert "rsqrt" in jaxpr  # LayerNorm normalises per token: it stays
  assert folded["encoder"]["norm"]["scale"].shape == (64,)


def test_batchnorm_without_a_conv_before_it_is_a_one_line_error():
  from hyperclip_jax.models.layers import ConditionedNorm

  class DenseBn(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return ConditionedNorm("batch", name="bn")(nn.Dense(4, name="fc")(x.mean((1, 2))), train)

  module = DenseBn()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  norms = fold.trace_norms(module, variables, 8)
  with pytest.raises(ValueError, match=r"^fold: BatchNorm bn does not follow a convolution[^\n]*$"):
    fold.fold(norms, variables)
