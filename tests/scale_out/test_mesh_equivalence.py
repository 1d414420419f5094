"""Partition rules and meshes change where arrays live, never the numbers a train step computes."""
import jax
import numpy as np
import pytest
import scale_helpers as h
from jax.sharding import PartitionSpec as P

from hyperclip_jax import config as config_lib
from hyperclip_jax import sharding, validation


@pytest.fixture(scope="module")
def one_device():
  config = h.fast_config()
  return h.run_steps(config, h.mesh_of(1, 1, jax.devices()[:1]), steps=1)


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (1, 8)])
def test_train_steps_on_any_mesh_equal_one_device(one_device, data, fsdp):
  params, losses = h.run_steps(h.fast_config(), h.mesh_of(data, fsdp), steps=1)
  want_params, want_losses = one_device
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  h.assert_trees_close(params, want_params, rtol=1e-4, atol=1e-5)


def test_train_step_with_chunked_loss_on_4x2_equals_dense_on_one_device(one_device):
  params, losses = h.run_steps(h.fast_config(), h.mesh_of(4, 2), steps=1, chunked_loss=True)
  want_params, want_losses = one_device
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  h.assert_trees_close(params, want_params, rtol=1e-4, atol=1e-5)


def test_fsdp_rule_shards_largest_divisible_dim_and_opt_state_follows():
  config = h.fast_config()
  mesh = h.mesh_of(2, 4)
  _, _, _, state = h.setup(config, mesh)
  for leaf in jax.tree.leaves(state["params"]):
    spec = leaf.sharding.spec
    if leaf.ndim and any(d % 4 == 0 for d in leaf.shape):
      big = max((d for d in leaf.shape if d % 4 == 0))
      assert spec[list(leaf.shape).index(big)] == "fsdp", (leaf.shape, spec)
    else:
      assert spec == P(), (leaf.shape, spec)
  mu = [l for l in jax.tree.leaves(state["opt_state"]) if l.ndim >= 2]
  assert mu and all(l.sharding.spec != P() for l in mu if any(d % 4 == 0 for d in l.shape))
  table = sharding.format_param_table(state["params"])
  assert "img/head/kernel" in table and "bytes per device" in table


def test_uncovered_param_and_bad_rule_value_are_config_errors():
  config = h.fast_config()
  config_lib.apply_override(config, "mesh.param_rules", "[('img/.*', 'fsdp')]")
  with pytest.raises(config_lib.ConfigError, match=r"param '(txt/.*|t|b)' matches no rule"):
    h.setup(config, h.mesh_of(4, 2))
  config_lib.apply_override(config, "mesh.param_rules", "[('.*', 'model')]")
  with pytest.raises(config_lib.ConfigError, match=r"param_rules\[0\]"):
    validation.validate(config, 8)
