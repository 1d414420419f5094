"""Hypernetwork: output structure, zero init, set semantics (permutation, masking), sizes, errors, grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax.models.hypernet import HyperNetwork

D = 16
TEMPLATE = {
    "stem": {"bn": {"scale": jax.ShapeDtypeStruct((8,), jnp.float32),
                    "bias": jax.ShapeDtypeStruct((8,), jnp.float32)}},
    "block_0": {"bn": {"scale": jax.ShapeDtypeStruct((12,), jnp.float32),
                       "bias": jax.ShapeDtypeStruct((12,), jnp.float32)}},
}


def _hyper(**kw):
  return HyperNetwork.for_template(TEMPLATE, **{**dict(width=32, depth=2, heads=4, bottleneck=8), **kw})


_apply = jax.jit(_hyper().apply)  # one compile per input shape instead of one per eager op


def _with_random_head(params, seed=0):
  """Re-initialises the zero head so outputs depend on the input."""
  params = jax.tree_util.tree_map(lambda x: x, params)
  head = params["params"]["head"]
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  head["kernel"] = jax.random.normal(k1, head["kernel"].shape)
  head["bias"] = jax.random.normal(k2, head["bias"].shape)
  return params


def _z(g, s, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (g, s, D))


@pytest.fixture(scope="module")
def params():
  """Parameters as initialised (zero head); they do not depend on G or S."""
  return jax.jit(_hyper().init)(jax.random.PRNGKey(0), _z(1, 2))


@pytest.fixture(scope="module")
def live_params(params):
  return _with_random_head(params)


def test_output_tree_matches_template_with_group_axis(params):
  hyper = _hyper()
  z = _z(3, 5)
  out = _apply(params, z)
  assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(TEMPLATE)
  shapes = jax.tree_util.tree_map(lambda x: x.shape, out)
  assert shapes == {"stem": {"bn": {"scale": (3, 8), "bias": (3, 8)}},
                    "block_0": {"bn": {"scale": (3, 12), "bias": (3, 12)}}}
  assert hyper.num_generated == 40
  single = _apply(params, z[0])
  assert single["block_0"]["bn"]["scale"].shape == (12,)


def test_zero_at_init(params):
  z = _z(2, 4)
  out = _apply(params, z)
  for leaf in jax.tree_util.tree_leaves(out):
    assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(leaf, 0.0)


def test_permuting_a_set_changes_nothing(live_params):
  params = live_params
  z = _z(2, 7)
  perm = jnp.asarray([3, 6, 0, 1, 5, 2, 4])
  a, b = _apply(params, z), _apply(params, z[:, perm])
  assert np.abs(np.asarray(a["stem"]["bn"]["scale"])).max() > 1e-2  # the head is live
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)


def test_mask_padded_set_equals_unpadded_set(live_params):
  params = live_params
  small, big = _z(1, 3, seed=1), _z(2, 9, seed=2)
  # group 0: the 3-element set padded with junk to 9; group 1: a full 9-element set.
  padded = big.at[0, :3].set(small[0])
  mask = jnp.arange(9)[None, :] < jnp.asarray([[3], [9]])
  out = _apply(params, padded, mask)
  ref_small, ref_big = _apply(params, small), _apply(params, big[1:])
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x[0], y[0], atol=1e-5), out, ref_small)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x[1], y[0], atol=1e-5), out, ref_big)


def test_different_sets_give_different_outputs(live_params):
  z = _z(2, 5)
  out = _apply(live_params, z)
  for leaf in jax.tree_util.tree_leaves(out):
    assert np.abs(np.asarray(leaf[0] - leaf[1])).max() > 1e-3


def test_thousand_element_set_and_single_element_set(live_params):
  params = live_params
  for s in (1, 1000):
    out = _apply(params, _z(2, s))
    assert all(np.isfinite(np.asarray(l)).all() and l.shape[0] == 2 for l in jax.tree_util.tree_leaves(out))


def test_empty_set_is_an_error_and_all_false_mask_gives_the_bias(live_params):
  params = live_params
  with pytest.raises(ValueError, match="empty set"):
    _apply(params, jnp.zeros((2, 0, D)))
  mask = jnp.asarray([[True, True, False], [False, False, False]])
  out = _apply(params, _z(2, 3), mask)
  flat = jnp.concatenate([l[1] for l in jax.tree_util.tree_leaves(out)])
  np.testing.assert_allclose(flat, params["params"]["head"]["bias"], atol=1e-6)
  with pytest.raises(ValueError, match="mask must be"):
    _apply(params, _z(2, 3), jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="no leaves"):
    HyperNetwork.for_template({})


def test_jit_and_grad_are_finite(params):
  hyper = _hyper()
  z = _z(2, 6)
  mask = jnp.asarray([[True] * 6, [True, True, False, False, False, False]])

  @jax.jit
  def loss_grad(p, z, mask):
    def loss(p, z):
      out = hyper.apply(p, z, mask)
      return sum(jnp.sum(jnp.sin(l + 0.3)) for l in jax.tree_util.tree_leaves(out))
    return jax.grad(loss, argnums=(0, 1))(p, z)

  gp, gz = loss_grad(params, z, mask)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves((gp, gz)))
  # Zero head: only the head gets a gradient at step 0, and it is non-zero.
  assert np.abs(np.asarray(gp["params"]["head"]["kernel"])).max() > 0
  np.testing.assert_array_equal(gz, 0.0)


def test_template_from_an_image_encoder_init():
  """The template comes straight from eval_shape(...)['generated'] of a module using ConditionedNorm."""
  import flax.linen as nn

  from hyperclip_jax.models.layers import ConditionedNorm

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = ConditionedNorm(name="bn0")(nn.Dense(6)(x), train)
      return ConditionedNorm(name="bn1")(nn.Dense(10)(x), train)

  enc = Tiny()
  x = jnp.ones((1, 2, 4))
  template = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)["generated"]
  hyper = HyperNetwork.for_template(template, width=16, heads=2, depth=1, bottleneck=4)
  assert hyper.num_generated == 32
  variables = jax.jit(enc.init)(jax.random.PRNGKey(0), x)
  hp = _with_random_head(jax.jit(hyper.init)(jax.random.PRNGKey(1), _z(1, 3)))
  generated = jax.jit(hyper.apply)(hp, _z(1, 3))
  y0 = jax.jit(enc.apply)({k: v for k, v in variables.items() if k != "generated"}, x)
  y1 = jax.jit(enc.apply)({**variables, "generated": generated}, x)
  assert y1.shape == y0.shape and np.abs(np.asarray(y1 - y0)).max() > 1e-3
