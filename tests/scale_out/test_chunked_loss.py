"""The ring (chunked) sigmoid loss equals the dense one in value and gradients on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hyperclip_jax import losses, sharding


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


def _by_hand_group_loss(zimg, ztxt, t, b, set_size):
  """Per-group dense sigmoid loss, a loop over the [S, S] blocks, averaged over the groups."""
  parts = [losses.sigmoid_loss(zimg[i:i + set_size], ztxt[i:i + set_size], t, b)
           for i in range(0, zimg.shape[0], set_size)]
  return sum(parts) / len(parts)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4)])
def test_group_scope_on_mesh_equals_per_group_dense_loss(data, fsdp, chunked):
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
  rng = np.random.default_rng(1)
  zimg, ztxt = _unit_rows(rng, 64, 16), _unit_rows(rng, 64, 16)  # 16 groups of 4: 2 per device
  zimg[:8] = ztxt[:8]
  t, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
  fn = losses.get_loss("sigmoid", chunked=chunked, mesh=mesh, scope="group", set_size=4)
  by_hand = lambda zi, zt, t, b: _by_hand_group_loss(zi, zt, t, b, 4)
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))
  want, want_g = jax.value_and_grad(by_hand, argnums=(0, 1, 2, 3))(jnp.asarray(zimg), jnp.asarray(ztxt), t, b)
  got, got_g = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(put(zimg), put(ztxt), t, b)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for g, w in zip(got_g, want_g):
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_chunked_group_scope_refuses_groups_that_span_devices():
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=8, fsdp=1)))
  fn = losses.get_loss("sigmoid", chunked=True, mesh=mesh, scope="group", set_size=4)
  with pytest.raises(ValueError, match=r"divisible by 8 devices x set_size=4, so no group spans two devices"):
    fn(jnp.zeros((16, 4)), jnp.zeros((16, 4)), 0.0, 0.0)
