"""Loss and gradients of one train step, over the whole batch at once or in micro-batches (GradCache).

A contrastive loss couples every pair in the batch, so averaging per-micro-batch gradients would change it
(fewer negatives). GradCache (Gao et al. 2021) keeps it exact with k = config.accum_steps micro-batches:
  1. embed each micro-batch without gradients and keep only zimg, ztxt   [B, D] in all
  2. loss and its gradients w.r.t. zimg, ztxt, t, b over the full batch (dense, ring or per-group loss)
  3. per micro-batch: recompute the forward and pull its slice of dL/dz back to the params (a vjp), summing
Peak activation memory is then one micro-batch's, plus the [B, D] embeddings and the loss's logits.

Why this is exact for HyperCLIP: a micro-batch holds whole groups of set_size consecutive pairs (each device
takes the i-th slice of its own rows, and that slice is a multiple of set_size), and everything a group's
embeddings depend on stays inside the group: the hypernet reads only that group's captions, and BatchNorm
normalises with that group's statistics. So each embedding is the same function of the params as in the
full-batch forward, and step 3's summed vjps are exactly the full-batch gradient (the captions' gradient
through the hypernet included, since step 3 recomputes the hypernet too). The running BatchNorm averages are
affine in the batch mean of the per-group statistics, so the mean over micro-batches of their updated
averages equals the full-batch update. Dropout / drop-path masks are drawn per micro-batch, so with those
on the step is equal in distribution only; the trainer's default has none.

A batch with multi-positive rows (config.data.task_sets) carries `positive_id` [B]; the loss gets it as
`ids` in both forms (step 2 scores the full batch in its original row order, so the ids need no split).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Array = jax.Array


def _num_shards(mesh: Mesh | None) -> int:
  return 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])


def split(x: Array, k: int, n: int) -> Array:
  """[B, ...] -> [k, B / k, ...]: micro-batch i takes the i-th of k slices of each of the n shards' rows."""
  b = x.shape[0]
  x = x.reshape((n, k, b // (n * k)) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape((k, b // k) + x.shape[3:])


def merge(x: Array, n: int) -> Array:
  """Inverse of split: [k, B / k, ...] -> [B, ...] in the original row order."""
  k, bk = x.shape[:2]
  x = x.reshape((k, n, bk // n) + x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape((k * bk,) + x.shape[3:])


def _ids(batch: dict) -> dict:
  """The loss's `ids` keyword: the batch's positive_id when it has one (multi-positive rows), else none."""
  return {"ids": batch["positive_id"]} if "positive_id" in batch else {}


def make_loss_and_grads(model: Any, loss_fn: Callable[..., Array], accum_steps: int = 1,
                        mesh: Mesh | None = None) -> Callable[..., tuple[Array, Any, Any, Array, Array]]:
  """fn(params, batch_stats, batch, rng) -> (loss, grads, new batch_stats, zimg [B, D], ztxt [B, D])."""

  def full_batch(params, batch_stats, batch, rng):
    def objective(params):
      zimg, ztxt, new_stats = model(params, batch_stats, batch["image"], batch["text"], train=True, rng=rng)
      return loss_fn(zimg, ztxt, params["t"], params["b"], **_ids(batch)), (new_stats, zimg, ztxt)
    (loss, (new_stats, zimg, ztxt)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, grads, new_stats, zimg, ztxt

  if accum_steps == 1:
    return full_batch

  k, n = accum_steps, _num_shards(mesh)

  def constrain(x):  # keep each micro-batch spread over all devices, each shard's rows local
    if mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, ("data", "fsdp"))))

  def grad_cache(params, batch_stats, batch, rng):
    b = batch["image"].shape[0]
    set_size = model.set_size
    if b % (n * k) or (b // (n * k)) % set_size:
      raise ValueError(
          f"batch of {b} does not split into {k} micro-batches of whole set_size={set_size} groups on {n} "
          f"devices; use a batch_size that is a multiple of {n * k * set_size}")
    micro = {key: constrain(split(batch[key], k, n)) for key in ("image", "text")}
    rngs = jax.random.split(rng, k) if rng is not None else None

    def forward(p, i, mb):
      r = None if rngs is None else rngs[i]
      return model(p, batch_stats, mb["image"], mb["text"], train=True, rng=r)

    def embed(_, xs):  # 1: embeddings without gradients
      i, mb = xs
      zimg, ztxt, stats = forward(params, i, mb)
      return None, (zimg, ztxt, stats)

    _, (zimg, ztxt, stats) = jax.lax.scan(embed, None, (jnp.arange(k), micro))
    new_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
    zimg, ztxt = merge(zimg, n), merge(ztxt, n)  # [B, D]

    # 2: the loss over the full batch and its gradients w.r.t. the embeddings and t, b.
    ids = _ids(batch)
    loss, (dzimg, dztxt, dt, db) = jax.value_and_grad(lambda *a: loss_fn(*a, **ids), argnums=(0, 1, 2, 3))(
        zimg, ztxt, params["t"], params["b"])
    dz = {"zimg": constrain(split(dzimg, k, n)), "ztxt": constrain(split(dztxt, k, n))}

    def backprop(acc, xs):  # 3: micro-batch by micro-batch, pull dL/dz back to the params
      i, mb, g = xs
      _, vjp_fn = jax.vjp(lambda p: forward(p, i, mb)[:2], params)
      (grads,) = vjp_fn((g["zimg"].astype(zimg.dtype), g["ztxt"].astype(ztxt.dtype)))
      return jax.tree.map(jnp.add, acc, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(backprop, zeros, (jnp.arange(k), micro, dz))
    grads = {**grads, "t": grads["t"] + dt, "b": grads["b"] + db}
    return loss, grads, new_stats, zimg, ztxt

  return grad_cache
