"""Contrastive image-text losses: SigLIP's sigmoid loss and CLIP's softmax loss.

Both take L2-normalised embeddings of N matching pairs (row i of `zimg` goes with row i of `ztxt`) and the
learnable log-temperature t' (the logit scale is exp(t')). They are pure jnp, computed in float32 whatever
the embeddings' dtype, and meant to run inside the jitted train step. Every loss in `LOSSES` is called
`loss(zimg, ztxt, t_prime, bias)`, so the trainer needs no per-loss branch; CLIP has no bias and ignores it.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

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


def sigmoid_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Array) -> Array:
  """SigLIP loss (Zhai et al. 2023): every one of the N×N pairs is a binary match/no-match problem.

  logits = exp(t') zimg ztxtᵀ + b, labels +1 on the diagonal and -1 elsewhere;
  loss = -Σ log σ(labels · logits) / N (summed over pairs, divided by N, as in the paper).
  """
  logits = _logits(zimg, ztxt, t_prime) + jnp.asarray(bias, jnp.float32)  # [N, N]
  n = logits.shape[0]
  labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0  # [N, N]
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


def softmax_clip_loss(zimg: Array, ztxt: Array, t_prime: Array, bias: Optional[Array] = None) -> Array:
  """CLIP loss: mean of the image->text and text->image cross-entropies with logit scale exp(t').

  `bias` is accepted for a uniform call signature and ignored: it would cancel out in a softmax anyway.
  """
  del bias
  logits = _logits(zimg, ztxt, t_prime)  # [N, N]
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return 0.5 * (i2t + t2i)


def contrastive_accuracy(zimg: Array, ztxt: Array) -> Array:
  """Fraction of images whose most similar text is their own (image->text top-1), for logging."""
  sims = _logits(zimg, ztxt, jnp.float32(0.0))  # [N, N]
  return jnp.mean((jnp.argmax(sims, axis=1) == jnp.arange(sims.shape[0])).astype(jnp.float32))


LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "softmax": softmax_clip_loss,
}


def get_loss(name: str) -> LossFn:
  """The loss called `name` (config.loss.name); every loss is `fn(zimg, ztxt, t_prime, bias) -> scalar`."""
  if name not in LOSSES:
    raise ValueError(f"loss name={name!r} is unknown; known: {', '.join(sorted(LOSSES))}")
  return LOSSES[name]
