"""Multi-positive sigmoid losses (config.data.task_sets): labels +1 iff the rows' ids match, in the dense, group,
ring (chunked) and GradCache forms; all-distinct ids give today's loss; the softmax loss and bad configs refuse."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax import accumulate, losses, sharding, validation
from hyperclip_jax import config as config_lib

N, D, S = 32, 8, 4  # rows, embedding width, set_size
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")


def _emb(seed: int = 0, n: int = N) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2, n, D)).astype(np.float32)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  return jnp.asarray(z[0]), jnp.asarray(z[1])


def _ids() -> np.ndarray:
  """Groups 0 and 2 task-shaped (rows 0,2 share a class, 1,3 share another; group 2: all one class), others
  unique; ids are batch rows, as the input pipeline makes them."""
  ids = np.arange(N, dtype=np.int32)
  ids[0:4] = [0, 1, 0, 1]
  ids[8:12] = [8, 8, 8, 8]
  return ids


def _reference(zimg, ztxt, t, b, ids, scope):
  """Dense loss with labels written out pair by pair (numpy), and the scored-pair mask of the scope."""
  labels = np.full((N, N), -1.0, np.float32)
  mask = np.zeros((N, N), np.float32)
  for i in range(N):
    for j in range(N):
      if ids[i] == ids[j]:
        labels[i, j] = 1.0
      if scope == "batch" or i // S == j // S:
        mask[i, j] = 1.0
  logits = jnp.exp(t) * zimg @ ztxt.T + b
  return -jnp.sum(mask * jax.nn.log_sigmoid(labels * logits)) / N


def _value_and_grads(fn, zimg, ztxt, t=1.3, b=-2.0, **kw):
  return jax.value_and_grad(lambda *a: fn(*a, **kw), argnums=(0, 1, 2, 3))(zimg, ztxt, jnp.float32(t), jnp.float32(b))


@pytest.mark.parametrize("scope", ["batch", "group"])
def test_multi_positive_loss_equals_hand_computed_dense_loss_value_and_gradients(scope):
  zimg, ztxt = _emb()
  ids = _ids()
  fn = losses.get_loss("sigmoid", scope=scope, set_size=S)
  got, got_g = _value_and_grads(fn, zimg, ztxt, ids=jnp.asarray(ids))
  want, want_g = _value_and_grads(lambda *a: _reference(*a, ids, scope), zimg, ztxt)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  plain, _ = _value_and_grads(fn, zimg, ztxt)  # the diagonal: the shared ids change the loss
  assert abs(float(plain) - float(got)) > 1e-3


@pytest.mark.parametrize("scope", ["batch", "group"])
def test_all_distinct_ids_give_todays_loss_exactly(scope):
  zimg, ztxt = _emb(1)
  fn = losses.get_loss("sigmoid", scope=scope, set_size=S)
  today, today_g = _value_and_grads(fn, zimg, ztxt)
  ids = jnp.asarray(np.arange(N, dtype=np.int32) + 1000)  # any distinct ids
  got, got_g = _value_and_grads(fn, zimg, ztxt, ids=ids)
  assert float(got) == float(today)
  for g, w in zip(got_g, today_g):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("scope,data,fsdp", [("batch", 8, 1), ("batch", 4, 2), ("group", 8, 1)])
def test_chunked_multi_positive_loss_equals_dense_on_8_devices(scope, data, fsdp):
  mesh = sharding.make_mesh(sharding.ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
  zimg, ztxt = _emb(2)
  ids = _ids()
  ids[4:8] = [5, 4, 5, 4]  # device 1's block (4 rows): positives off the diagonal there too
  ids = jnp.asarray(ids)
  dense = losses.get_loss("sigmoid", scope=scope, set_size=S)
  chunked = losses.get_loss("sigmoid", chunked=True, mesh=mesh, scope=scope, set_size=S)
  want, want_g = _value_and_grads(dense, zimg, ztxt, ids=ids)
  got, got_g = jax.jit(lambda zi, zt, i: _value_and_grads(chunked, zi, zt, ids=i))(zimg, ztxt, ids)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


class _LinearTowers:
  """A stand-in model for GradCache: each row's embeddings depend only on its own inputs and the params."""
  set_size = S

  def __call__(self, params, batch_stats, image, text, train, rng):
    def norm(x):
      return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return norm(image @ params["wi"]), norm(text @ params["wt"]), batch_stats


@pytest.mark.parametrize("scope", ["batch", "group"])
def test_grad_cache_with_positive_ids_equals_full_batch(scope):
  rng = np.random.default_rng(3)
  params = {"wi": jnp.asarray(rng.normal(size=(6, D)), jnp.float32),
            "wt": jnp.asarray(rng.normal(size=(5, D)), jnp.float32), "t": jnp.float32(1.0), "b": jnp.float32(-1.0)}
  batch = {"image": jnp.asarray(rng.normal(size=(N, 6)), jnp.float32),
           "text": jnp.asarray(rng.normal(size=(N, 5)), jnp.float32), "positive_id": jnp.asarray(_ids())}
  loss_fn = losses.get_loss("sigmoid", scope=scope, set_size=S)
  full = accumulate.make_loss_and_grads(_LinearTowers(), loss_fn, 1)(params, {}, batch, None)
  cached = jax.jit(accumulate.make_loss_and_grads(_LinearTowers(), loss_fn, 4))(params, {}, batch, None)
  np.testing.assert_allclose(cached[0], full[0], rtol=1e-6)
  for k in params:
    np.testing.assert_allclose(cached[1][k], full[1][k], rtol=1e-5, atol=1e-6)
  no_ids = accumulate.make_loss_and_grads(_LinearTowers(), loss_fn, 1)(
      params, {}, {k: batch[k] for k in ("image", "text")}, None)
  assert abs(float(no_ids[0]) - float(full[0])) > 1e-3  # the ids reached the loss


def test_contrastive_accuracy_counts_a_same_id_text_as_correct():
  zimg = jnp.eye(4, dtype=jnp.float32)
  ztxt = jnp.asarray(np.eye(4, dtype=np.float32)[[1, 0, 2, 3]])  # rows 0 and 1 swapped
  assert float(losses.contrastive_accuracy(zimg, ztxt)) == 0.5
  assert float(losses.contrastive_accuracy(zimg, ztxt, jnp.asarray([7, 7, 2, 3]))) == 1.0


def test_softmax_refuses_ids_and_config_validation_refuses_bad_task_sets():
  zimg, ztxt = _emb()
  with pytest.raises(ValueError, match="loss.name='sigmoid'"):
    losses.softmax_clip_loss(zimg, ztxt, 0.0, None, ids=jnp.arange(N))
  config = config_lib.load_config(f"{CONFIGS}:tiny=true")
  config_lib.apply_override(config, "loss.name", "sigmoid")
  config_lib.apply_override(config, "data.task_sets", "0.5")
  validation.validate(config, 1)
  config_lib.apply_override(config, "data.task_sets", "1.5")
  with pytest.raises(config_lib.ConfigError, match=r"config.data.task_sets=1.5 must be a probability"):
    validation.validate(config, 1)
  config_lib.apply_override(config, "data.task_sets", "0.5")
  config_lib.apply_override(config, "loss.name", "softmax")
  with pytest.raises(config_lib.ConfigError, match=r"task_sets=0.5 .* needs config.loss.name='sigmoid'"):
    validation.validate(config, 1)
  config_lib.apply_override(config, "loss.name", "sigmoid")
  config_lib.apply_override(config, "data.name", "manifest")
  with pytest.raises(config_lib.ConfigError, match=r"demo source only.*docs/data.md"):
    validation.validate(config, 1)
