"""GradCache accumulation: k micro-batches give the full batch's loss, gradients and BatchNorm statistics."""
import jax
import numpy as np
import pytest
import scale_helpers as h

from hyperclip_jax import accumulate, losses, sharding, validation
from hyperclip_jax import config as config_lib


def _loss_grads_stats(config, mesh, accum_steps, chunked=False, scope="batch"):
  model, _, _, state = h.setup(config, mesh)
  loss_fn = losses.get_loss("sigmoid", chunked=chunked, mesh=mesh, scope=scope, set_size=model.set_size)
  fn = jax.jit(accumulate.make_loss_and_grads(model, loss_fn, accum_steps, mesh))
  batch = sharding.put_batch(h.fixed_batch(config), mesh)
  loss, grads, stats, _, _ = fn(state["params"], state["batch_stats"], batch, jax.random.PRNGKey(3))
  return jax.device_get((loss, grads, stats))


@pytest.mark.parametrize("variant", ["hyperclip"])
def test_grad_cache_equals_full_batch(variant):
  # tiny EfficientNet: BatchNorm statistics per group are what micro-batching could get wrong
  config = h.tiny_config(variant)
  mesh = h.mesh_of(2, 1, jax.devices()[:2])  # 32 pairs = 2 devices x 4 micro-batches x 1 group of 4
  loss, grads, stats = _loss_grads_stats(config, mesh, 1)
  loss_k, grads_k, stats_k = _loss_grads_stats(config, mesh, 4)
  np.testing.assert_allclose(loss_k, loss, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  # f32 rounding differs with the micro-batch shapes; BatchNorm's E[x²] - E[x]² amplifies it to ~1e-4 of
  # the largest gradient in a few entries (a wrong grouping or a missed path would be O(1) off)
  h.assert_trees_close(grads_k, grads, rtol=1e-3, atol=3e-4 * scale)
  h.assert_trees_close(stats_k, stats, rtol=1e-5, atol=1e-6)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["hyper"]))  # the hypernet path is exercised


def test_grad_cache_with_group_scope_equals_full_batch():
  # loss.scope='group' through GradCache (with the per-device chunked group loss) vs the full batch (dense)
  config = h.tiny_config("hyperclip")
  mesh = h.mesh_of(2, 1, jax.devices()[:2])
  loss, grads, stats = _loss_grads_stats(config, mesh, 1, scope="group")
  loss_k, grads_k, stats_k = _loss_grads_stats(config, mesh, 4, chunked=True, scope="group")
  loss_b, _, _ = _loss_grads_stats(config, mesh, 1)
  assert abs(float(loss_b) - float(loss)) > 1e-3  # group scope scores fewer pairs than the batch scope
  np.testing.assert_allclose(loss_k, loss, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  h.assert_trees_close(grads_k, grads, rtol=1e-3, atol=3e-4 * scale)
  h.assert_trees_close(stats_k, stats, rtol=1e-5, atol=1e-6)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["hyper"]))


def test_split_merge_keep_each_shards_rows_and_order():
  x = np.arange(32)
  parts = np.asarray(accumulate.split(x, 4, 2))  # shard 0 holds rows 0..15, shard 1 rows 16..31
  assert parts[0].tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
  assert np.asarray(accumulate.merge(parts, 2)).tolist() == x.tolist()


def test_micro_batches_of_partial_groups_are_refused():
  config = h.tiny_config()
  config_lib.apply_override(config, "accum_steps", "2")
  with pytest.raises(config_lib.ConfigError, match=r"config.accum_steps=2: .* multiple of 64"):
    validation.validate(config, 8)
  validation.validate(config, 1)  # 8 groups of 4 split into 2 micro-batches on one device
  config_lib.apply_override(config, "model.image.bn_stats", "global")  # stats over the batch: not exact
  with pytest.raises(config_lib.ConfigError, match=r"accum_steps=2 with config.model.image.bn_stats='global'"):
    validation.validate(config, 1)
