"""Hypernetwork: a set of text embeddings -> the image tower's generated norm parameters (Δscale, Δbias).

PAPER.md: Linear -> non-causal transformer -> bottleneck -> average pool over the set + Linear. There are
no positional embeddings and the pool is a mean, so the output is a function of the *set*: permuting its
elements changes nothing. Ragged sets are padded and masked (attention keys and the mean both ignore
masked elements). The output layer is zero-initialised, so at step 0 every Δ is exactly 0 and the image
tower equals the SigLIP baseline (residual norm mode).

The target structure comes from the image tower's 'generated' collection, e.g.
  template = jax.eval_shape(encoder.init, rng, images)['generated']
  hyper = HyperNetwork.for_template(template, width=256)
Flax module fields must be hashable, so the module stores the template as `treedef` (a jax PyTreeDef) and
`shapes` (one shape tuple per leaf, in tree_leaves order); `for_template` converts a tree into them.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperclip_jax.models.text import EncoderBlock

Array = jax.Array
Dtype = Any


class HyperNetwork(nn.Module):
  """z [G, S, D] (or [S, D]) + mask [G, S] (or [S]; None = all valid) -> tree like the template, leaves [G, *shape].

  With a [S, D] input the leaves have the template's own shapes (no G axis). S = 0 is a ValueError. A group
  whose mask is all False is allowed: its masked mean is 0 (the count is clamped to 1), so its output is
  the output layer's bias alone — the "no text" Δ (exactly 0 at init).
  Parameters are float32; `dtype` is the compute dtype; the generated values are float32.
  """
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  width: int = 256
  depth: int = 2
  heads: int = 4
  mlp_dim: int | None = None  # None -> 4 * width
  bottleneck: int = 64
  dtype: Dtype | None = None

  @classmethod
  def for_template(cls, template: Any, **kwargs: Any) -> "HyperNetwork":
    """Builds a HyperNetwork whose output tree has the structure and leaf shapes of `template`.

    `template` is any pytree whose leaves have `.shape` (arrays or jax.ShapeDtypeStruct), e.g. the image
    tower's 'generated' collection from jax.eval_shape.
    """
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if not leaves:
      raise ValueError("hypernet template has no leaves: the image tower has no ConditionedNorm layers "
                       "(is its 'generated' collection empty?)")
    shapes = []
    for leaf in leaves:
      if not hasattr(leaf, "shape"):
        raise ValueError(f"hypernet template leaves must have a .shape; got {type(leaf).__name__}")
      shapes.append(tuple(int(d) for d in leaf.shape))
    return cls(treedef=treedef, shapes=tuple(shapes), **kwargs)

  @property
  def num_generated(self) -> int:
    """Total number of generated values (e.g. 42,016 for efficientnet_b0)."""
    return int(sum(math.prod(s) for s in self.shapes))

  @nn.compact
  def __call__(self, z: Array, mask: Array | None = None) -> Any:
    if z.ndim not in (2, 3):
      raise ValueError(f"hypernet input must be text embeddings [S, D] or grouped [G, S, D]; got shape "
                       f"{tuple(z.shape)}")
    ungrouped = z.ndim == 2
    if ungrouped:
      z = z[None]
      mask = None if mask is None else jnp.asarray(mask)[None]
    g, s, _ = z.shape
    if s == 0:
      raise ValueError("hypernet got an empty set (S = 0): each set needs at least one text embedding")
    if mask is None:
      mask = jnp.ones((g, s), bool)
    elif mask.shape != (g, s):
      raise ValueError(f"hypernet mask must be [G, S] = {(g, s)} matching z {tuple(z.shape)}; got shape "
                       f"{tuple(mask.shape)}")
    mask = mask.astype(bool)  # [G, S]

    dtype = self.dtype or jnp.float32
    x = nn.Dense(self.width, dtype=self.dtype, name="embed")(z.astype(dtype))  # [G, S, width]
    attn_mask = mask[:, None, None, :]  # [G, 1, 1, S]: masked elements are never attended to
    mlp_dim = self.mlp_dim or 4 * self.width
    for i in range(self.depth):
      x = EncoderBlock(self.heads, mlp_dim, dtype=self.dtype, name=f"block_{i}")(x, attn_mask)
    x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
    h = nn.Dense(self.bottleneck, dtype=self.dtype, name="bottleneck")(x)  # [G, S, bottleneck]

    m = mask[..., None].astype(jnp.float32)
    count = jnp.maximum(m.sum(1), 1.0)  # [G, 1]; clamped so an all-False group gives 0, not NaN
    pooled = (h.astype(jnp.float32) * m).sum(1) / count  # [G, bottleneck]

    flat = nn.Dense(self.num_generated, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, name="head")(pooled.astype(dtype))
    flat = flat.astype(jnp.float32)  # [G, N]
    leaves, start = [], 0
    for shape in self.shapes:
      n = math.prod(shape)
      leaf = flat[:, start:start + n].reshape((g,) + shape)
      leaves.append(leaf[0] if ungrouped else leaf)
      start += n
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


__all__ = ["HyperNetwork"]
