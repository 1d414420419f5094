"""Contrastive image-text losses: SigLIP's sigmoid loss and CLIP's softmax loss.

Both take L2-normalised embeddings of N matching pairs (row i of `zimg` goes with row i of `ztxt`) and the
learnable log-temperature t' (the logit scale is exp(t')). They are pure jnp, computed in float32 whatever
the embeddings' dtype, and meant to run inside the jitted train step. Every loss in `LOSSES` is called
`loss(zimg, ztxt, t_prime, bias)`, so the trainer needs no per-loss branch; CLIP has no bias and ignores it.

`chunked_sigmoid_loss` is the SigLIP paper's memory-light form of the sigmoid loss over a device mesh: each
device keeps its own [b, D] image embeddings and passes text blocks around a ring (ppermute), so it never
holds more than one [b, b] block of logits; loss and gradients equal the dense loss's.

`config.loss.scope` chooses which pairs are scored. "batch" (the default): all N x N pairs. "group": each
image only against the captions of its own conditioning set (the batch's consecutive groups of set_size
pairs, the set the hypernet read), as at test time where a class set holds every candidate; `group_loss`
is then the mean over the N / set_size groups of the dense loss of each [set_size, set_size] block (sigmoid:
each group's sum over pairs / set_size, so the whole is the sum over all scored pairs / N, as SigLIP's;
softmax: the mean of both directions' cross-entropies over all N images and N texts).

Multi-positive rows (config.data.task_sets, data/sources/demo_task_sets.py): the sigmoid losses take optional
`ids` [N] int, one per row; pair (i, j) is a positive (label +1) iff ids[i] == ids[j], else -1. With all ids
distinct that is the diagonal, so the loss equals the one without ids. ids=None keeps the diagonal. The
softmax loss has one positive per row and refuses ids.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Array = jax.Array
LossFn = Callable[..., Array]


def _logits(zimg: Array, ztxt: Array, t_prime: Array) -> Array:
  """exp(t') * zimg @ ztxtᵀ in float32: [N, D] x [N, D] -> [N, N], rows are images."""
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(
        f"contrastive loss: zimg and ztxt must both be [N, D] with the same shape; got {tuple(zimg.shape)} and "
        f"{tuple(ztxt.shape)}")
  zimg = zimg.astype(jnp.float32)
  ztxt = ztxt.astype(jnp.float32)
  scale = jnp.exp(jnp.asarray(t_prime, jnp.float32))
  return scale * jnp.dot(zimg, ztxt.T)


def _id_labels(ids_img: Array, ids_txt: Array) -> Array:
  """+1 where the row ids match, -1 elsewhere: [b] x [b'] -> [b, b'] float32."""
  same = jnp.asarray(ids_img)[:, None] == jnp.asarray(ids_txt)[None, :]
  return jnp.where(same, jnp.float32(1.0), jnp.float32(-1.0))


def sigmoid_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Array, ids: Optional[Array] = None) -> Array:
  """SigLIP loss (Zhai et al. 2023): every one of the N×N pairs is a binary match/no-match problem.

  logits = exp(t') zimg ztxtᵀ + b, labels +1 on the diagonal (or where `ids` match) and -1 elsewhere;
  loss = -Σ log σ(labels · logits) / N (summed over pairs, divided by N, as in the paper).
  """
  logits = _logits(zimg, ztxt, t_prime) + jnp.asarray(bias, jnp.float32)  # [N, N]
  n = logits.shape[0]
  if ids is None:
    labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0  # [N, N]
  else:
    labels = _id_labels(_check_ids(ids, n), ids)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


def _check_ids(ids: Array, n: int) -> Array:
  if ids.ndim != 1 or ids.shape[0] != n:
    raise ValueError(f"contrastive loss: ids must be [N] with N={n} rows; got shape {tuple(ids.shape)}")
  return ids


def softmax_clip_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Optional[Array] = None,
                      ids: Optional[Array] = None) -> Array:
  """CLIP loss: mean of the image->text and text->image cross-entropies with logit scale exp(t').

  `bias` is accepted for a uniform call signature and ignored: it would cancel out in a softmax anyway.
  """
  del bias
  if ids is not None:
    raise ValueError("the softmax (CLIP) loss takes one positive per row; multi-positive ids "
                     "(config.data.task_sets > 0) need config.loss.name='sigmoid'")
  logits = _logits(zimg, ztxt, t_prime)  # [N, N]
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return 0.5 * (i2t + t2i)


def contrastive_accuracy(zimg: Array, ztxt: Array, ids: Optional[Array] = None) -> Array:
  """Fraction of images whose most similar text is their own (image->text top-1), for logging; with `ids`,
  a text of the same id counts as their own."""
  sims = _logits(zimg, ztxt, jnp.float32(0.0))  # [N, N]
  best = jnp.argmax(sims, axis=1)
  if ids is None:
    return jnp.mean((best == jnp.arange(sims.shape[0])).astype(jnp.float32))
  return jnp.mean((ids[best] == ids).astype(jnp.float32))


def _pair_terms(zimg: Array, ztxt: Array, scale: Array, bias: Array, positive: bool) -> Array:
  """Σ -log σ(label · logit) over one [b, b] block; `positive` puts +1 labels on its diagonal."""
  logits = scale * jnp.dot(zimg, ztxt.T) + bias  # [b, b]
  if positive:
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))
  return -jnp.sum(jax.nn.log_sigmoid(-logits))


def _id_terms(zimg: Array, ztxt: Array, scale: Array, bias: Array, ids_img: Array, ids_txt: Array) -> Array:
  """Σ -log σ(label · logit) over one [b, b] block, labels +1 where the ids match."""
  logits = scale * jnp.dot(zimg, ztxt.T) + bias  # [b, b]
  return -jnp.sum(jax.nn.log_sigmoid(_id_labels(ids_img, ids_txt) * logits))


def chunked_sigmoid_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Array, ids: Optional[Array] = None,
                         *, mesh: Mesh, axes: tuple[str, ...] = ("data", "fsdp")) -> Array:
  """The sigmoid loss computed block by block around a ring of the mesh's `axes` (SigLIP paper, Sec. 3.3).

  zimg, ztxt [N, D] are split over `axes` (n devices, b = N / n rows each). Step 0 scores a device's images
  against its own texts (the positives sit on that block's diagonal); each of the n - 1 further steps
  passes the text block to the next device and scores all-negative pairs. Each step is rematerialised in
  the backward pass, so a device holds one [b, b] logit block plus the n text blocks it has seen. With `ids`
  the texts' ids travel with their block and label every block's pairs.
  """
  n = 1
  for a in axes:
    n *= mesh.shape[a]
  if zimg.ndim != 2 or zimg.shape != ztxt.shape or zimg.shape[0] % n:
    raise ValueError(
        f"chunked_sigmoid_loss: zimg and ztxt must both be [N, D] with N divisible by {n} devices; got "
        f"{tuple(zimg.shape)} and {tuple(ztxt.shape)}")
  total = zimg.shape[0]
  perm = [(i, (i + 1) % n) for i in range(n)]

  def local(zi, zt, t, b):  # zi, zt [b, D] on this device
    zi, zt = zi.astype(jnp.float32), zt.astype(jnp.float32)
    scale, b = jnp.exp(t.astype(jnp.float32)), b.astype(jnp.float32)
    acc = _pair_terms(zi, zt, scale, b, positive=True)

    @jax.checkpoint
    def step(carry, _):
      zt, acc = carry
      zt = jax.lax.ppermute(zt, axes, perm)
      return (zt, acc + _pair_terms(zi, zt, scale, b, positive=False)), None

    if n > 1:
      (_, acc), _ = jax.lax.scan(step, (zt, acc), None, length=n - 1)
    return jax.lax.psum(acc, axes) / total

  def local_ids(zi, zt, t, b, idi):  # as local, with the text ids passed around the ring with their block
    zi, zt = zi.astype(jnp.float32), zt.astype(jnp.float32)
    scale, b = jnp.exp(t.astype(jnp.float32)), b.astype(jnp.float32)
    acc = _id_terms(zi, zt, scale, b, idi, idi)

    @jax.checkpoint
    def step(carry, _):
      zt, idt, acc = carry
      zt, idt = jax.lax.ppermute((zt, idt), axes, perm)
      return (zt, idt, acc + _id_terms(zi, zt, scale, b, idi, idt)), None

    if n > 1:
      (_, _, acc), _ = jax.lax.scan(step, (zt, idi, acc), None, length=n - 1)
    return jax.lax.psum(acc, axes) / total

  t_prime, bias = jnp.asarray(t_prime, jnp.float32), jnp.asarray(bias, jnp.float32)
  if ids is None:
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())
    return fn(zimg, ztxt, t_prime, bias)
  fn = jax.shard_map(local_ids, mesh=mesh, in_specs=(P(axes), P(axes), P(), P(), P(axes)), out_specs=P())
  return fn(zimg, ztxt, t_prime, bias, _check_ids(ids, total))


def group_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Array, ids: Optional[Array] = None, *,
               set_size: int, loss: LossFn = sigmoid_loss) -> Array:
  """loss.scope='group': `loss` over each group of set_size consecutive pairs alone, averaged over groups.

  Pair i is scored only against the texts of its own group (a block-diagonal [N, N] pattern); logits held:
  [N / set_size, set_size, set_size].
  """
  if zimg.ndim != 2 or zimg.shape != ztxt.shape or zimg.shape[0] % set_size:
    raise ValueError(
        f"group loss: zimg and ztxt must both be [N, D] with N divisible by set_size={set_size}; got "
        f"{tuple(zimg.shape)} and {tuple(ztxt.shape)}")
  shape = (zimg.shape[0] // set_size, set_size, zimg.shape[1])
  if ids is None:
    per_group = jax.vmap(lambda zi, zt: loss(zi, zt, t_prime, bias))(zimg.reshape(shape), ztxt.reshape(shape))
  else:
    ids = _check_ids(ids, zimg.shape[0]).reshape(shape[:2])
    per_group = jax.vmap(lambda zi, zt, i: loss(zi, zt, t_prime, bias, ids=i))(
        zimg.reshape(shape), ztxt.reshape(shape), ids)
  return jnp.mean(per_group)


def chunked_group_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Array, ids: Optional[Array] = None, *,
                       set_size: int, mesh: Mesh, loss: LossFn = sigmoid_loss,
                       axes: tuple[str, ...] = ("data", "fsdp")) -> Array:
  """group_loss with each device scoring only its own rows' groups (no ring: a group never spans devices).

  Exact when each device's N / n rows are whole groups (config.validate ensures it); otherwise a ValueError.
  """
  n = 1
  for a in axes:
    n *= mesh.shape[a]
  if zimg.ndim != 2 or zimg.shape != ztxt.shape or zimg.shape[0] % (n * set_size):
    raise ValueError(
        f"chunked group loss: zimg and ztxt must both be [N, D] with N divisible by {n} devices x "
        f"set_size={set_size}, so no group spans two devices; got {tuple(zimg.shape)} and {tuple(ztxt.shape)}")
  groups = zimg.shape[0] // set_size

  def local(zi, zt, t, b):
    local_groups = zi.shape[0] // set_size
    return jax.lax.psum(group_loss(zi, zt, t, b, set_size=set_size, loss=loss) * local_groups, axes) / groups

  def local_ids(zi, zt, t, b, idi):
    local_groups = zi.shape[0] // set_size
    per_device = group_loss(zi, zt, t, b, idi, set_size=set_size, loss=loss)
    return jax.lax.psum(per_device * local_groups, axes) / groups

  t_prime, bias = jnp.asarray(t_prime, jnp.float32), jnp.asarray(bias, jnp.float32)
  if ids is None:
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())
    return fn(zimg, ztxt, t_prime, bias)
  fn = jax.shard_map(local_ids, mesh=mesh, in_specs=(P(axes), P(axes), P(), P(), P(axes)), out_specs=P())
  return fn(zimg, ztxt, t_prime, bias, _check_ids(ids, zimg.shape[0]))


LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "softmax": softmax_clip_loss,
}


SCOPES = ("batch", "group")  # config.loss.scope: which pairs are scored (module docstring)


def get_loss(name: str, chunked: bool = False, mesh: Optional[Mesh] = None, scope: str = "batch",
             set_size: Optional[int] = None) -> LossFn:
  """The loss called `name` (config.loss.name); every loss is `fn(zimg, ztxt, t_prime, bias, ids=None) -> scalar`.

  chunked=True (config.loss.chunked) selects the ring form of the sigmoid loss over `mesh`; scope='group'
  (config.loss.scope) scores each group of `set_size` pairs alone (with chunked=True: per device, no ring).
  """
  if name not in LOSSES:
    raise ValueError(f"loss name={name!r} is unknown; known: {', '.join(sorted(LOSSES))}")
  if scope not in SCOPES:
    raise ValueError(f"loss scope={scope!r} is unknown; known: {', '.join(SCOPES)}")
  if scope == "group":
    if not set_size or set_size < 1:
      raise ValueError(f"loss scope='group' needs the model's set_size (a positive int); got {set_size!r}")
    if chunked and name != "sigmoid":
      raise ValueError(f"config.loss.chunked=true needs config.loss.name='sigmoid'; got {name!r}")
    if chunked and mesh is None:
      raise ValueError("the chunked group loss needs the device mesh")
    if chunked:
      return functools.partial(chunked_group_loss, set_size=set_size, mesh=mesh, loss=LOSSES[name])
    return functools.partial(group_loss, set_size=set_size, loss=LOSSES[name])
  if not chunked:
    return LOSSES[name]
  if name != "sigmoid":
    raise ValueError(f"config.loss.chunked=true needs config.loss.name='sigmoid'; got {name!r}")
  if mesh is None:
    raise ValueError("the chunked sigmoid loss needs the device mesh")
  return functools.partial(chunked_sigmoid_loss, mesh=mesh)
