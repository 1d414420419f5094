"""bf16 compute and per-block remat: finite losses that follow the f32 run (remat: to rounding, bf16: 2%)."""
import numpy as np
import pytest
import scale_helpers as h


@pytest.fixture(scope="module")
def f32_losses():
  return h.run_steps(h.fast_config(), h.mesh_of(8, 1), steps=3)[1]


@pytest.mark.parametrize("override, rtol", [({"model.remat": True}, 1e-5), ({"model.dtype": "bfloat16"}, 2e-2)])
def test_losses_follow_f32(f32_losses, override, rtol):
  params, losses = h.run_steps(h.fast_config(**override), h.mesh_of(8, 1), steps=3)
  assert np.all(np.isfinite(losses)), losses
  np.testing.assert_allclose(losses, f32_losses, rtol=rtol)
  assert all(p.dtype == np.float32 for p in __import__("jax").tree.leaves(params))  # params stay f32
