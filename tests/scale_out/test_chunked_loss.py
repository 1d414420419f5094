"""The ring (chunked) sigmoid loss equals the dense one in value and gradients on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hyperclip_jax import losses
from hyperclip_jax import sharding


def _unit_rows(rng, n, d):
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4), (1, 8)])
def test_chunked_loss_and_grads_equal_dense(data, fsdp):
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
  rng = np.random.default_rng(0)
  zimg, ztxt = _unit_rows(rng, 32, 16), _unit_rows(rng, 32, 16)
  zimg[:8] = ztxt[:8]  # some confident positives, so the positive terms matter
  t, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
  chunked = losses.get_loss("sigmoid", chunked=True, mesh=mesh)
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))
  grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(put(zimg), put(ztxt), t, b)
  (want, want_g), (got, got_g) = grad(losses.sigmoid_loss), grad(chunked)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for g, w in zip(got_g, want_g):
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_chunked_loss_keeps_only_one_block_of_logits():
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=8, fsdp=1)))
  n, d = 1024, 8  # dense: [128, 1024] logits per device; chunked: [128, 128]
  spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=NamedSharding(mesh, P(sharding.BATCH_AXES)))
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  def temp_bytes(fn):
    step = jax.jit(jax.grad(fn, argnums=(0, 1)))
    return step.lower(spec, spec, scalar, scalar).compile().memory_analysis().temp_size_in_bytes
  dense = temp_bytes(losses.sigmoid_loss)
  chunked = temp_bytes(losses.get_loss("sigmoid", chunked=True, mesh=mesh))
  assert chunked < dense / 3, (chunked, dense)


def test_chunked_loss_rejects_other_losses_and_bad_shapes():
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=8, fsdp=1)))
  with pytest.raises(ValueError, match="needs config.loss.name='sigmoid'"):
    losses.get_loss("softmax", chunked=True, mesh=mesh)
  with pytest.raises(ValueError, match="divisible by 8 devices"):
    losses.chunked_sigmoid_loss(jnp.zeros((12, 4)), jnp.zeros((12, 4)), 0.0, 0.0, mesh=mesh)
