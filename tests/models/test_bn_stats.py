"""ConditionedNorm's BatchNorm training statistics: per group of set_size images (default) or over the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax.models.layers import ConditionedNorm


def _train_apply(stats: str, x: np.ndarray):
  norm = ConditionedNorm(stats=stats)
  variables = norm.init(jax.random.PRNGKey(0), x, train=False)
  return norm.apply(variables, x, train=True, mutable=["batch_stats"])


def test_group_stats_remove_a_shift_shared_by_the_group_and_global_stats_keep_it():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(1, 3, 4, 4, 5)).astype(np.float32)
  x = np.concatenate([base, base + 5.0])  # [G=2, S=3, H, W, C]: group 1 is group 0 shifted by 5
  y_group, s_group = _train_apply("group", x)
  np.testing.assert_allclose(y_group[1], y_group[0], atol=1e-4)  # per group, the shift is normalised away
  y_global, s_global = _train_apply("global", x)
  expect = (x - x.mean((0, 1, 2, 3))) / np.sqrt(x.var((0, 1, 2, 3)) + 1e-5)
  np.testing.assert_allclose(y_global, expect, atol=1e-4)
  assert float(jnp.mean(y_global[1] - y_global[0])) > 1.5
  # Running averages: the same mean (equal groups), the variance of the statistics that were used.
  np.testing.assert_allclose(s_global["batch_stats"]["mean"], s_group["batch_stats"]["mean"], atol=1e-6)
  np.testing.assert_allclose(s_global["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2, 3)), rtol=1e-4)
  np.testing.assert_allclose(s_group["batch_stats"]["var"], 0.9 + 0.1 * base.var((0, 1, 2, 3)), rtol=1e-4)


def test_unknown_stats_name_is_a_one_line_error():
  with pytest.raises(ValueError, match="norm stats 'batch' is unknown; known: group, global"):
    _train_apply("batch", np.zeros((1, 2, 2, 2, 3), np.float32))
