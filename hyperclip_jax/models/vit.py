"""ViT baselines, parameter for parameter timm's `vit_{tiny,small,base}_patch16_224`.

Patch embedding (conv p x p / p with bias) -> [class token; patches] + learned position embeddings ->
pre-norm blocks (LayerNorm eps 1e-6, multi-head self-attention with a fused qkv projection, GELU MLP) ->
final LayerNorm -> class token: timm's `forward_head(..., pre_logits=True)` for these models. Every
LayerNorm is a ConditionedNorm(kind='layer'), so the hypernetwork can generate its scale and bias. Tokens
stay grouped as [G, S, N, D]. At an input size other than the native one (`default_size`), the position
embeddings of the patch grid are resampled bicubically with antialiasing (timm's resample_abs_pos_embed defaults); the class-token embedding is kept.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperclip_jax.models.conv import Conv
from hyperclip_jax.models.layers import ConditionedNorm, DropPath, group_images, ungroup
from hyperclip_jax.models.options import EncoderOptions, validate_options

Array = jax.Array
_dense_init = nn.initializers.truncated_normal(0.02)  # timm's trunc_normal_(std=.02) for Linear weights


def resample_pos_embed(pos_embed: Array, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Array:
  """[1 + h·w, D] -> [1 + h'·w', D]: bicubic (antialiased) resampling of the grid part, class-token row kept.

  Downsampling is antialiased (like timm's resample_abs_pos_embed, which is bicubic by default).
  """
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  (oh, ow), (nh, nw) = old_grid, new_grid
  d = pos_embed.shape[-1]
  grid = pos_embed[1:].reshape(oh, ow, d).astype(jnp.float32)
  grid = jax.image.resize(grid, (nh, nw, d), method="cubic", antialias=True)
  return jnp.concatenate([pos_embed[:1], grid.reshape(nh * nw, d).astype(pos_embed.dtype)], axis=0)


class Attention(nn.Module):
  """Multi-head self-attention with timm's fused qkv layout: qkv output features ordered (3, heads, dim)."""
  heads: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [G, S, N, D]
    d = x.shape[-1]
    hd = d // self.heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)  # [G, S, N, 3D]
    qkv = qkv.reshape((-1, x.shape[-2], 3, self.heads, hd))  # [G·S, N, 3, H, hd]
    # [G·S, N, H, hd] each; static slices, not qkv[:, :, i] (a gather under a symbolic batch: TFLite has none)
    q, k, v = (jax.lax.index_in_dim(qkv, i, 2, keepdims=False) for i in range(3))
    o = jax.nn.dot_product_attention(q, k, v)  # scale 1/sqrt(hd), softmax in float32
    o = o.reshape(x.shape)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(o)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    h = jax.nn.gelu(h, approximate=False)  # timm/torch nn.GELU: exact erf
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)


def _ln(opts: EncoderOptions, name: str) -> ConditionedNorm:
  return ConditionedNorm("layer", opts.norm_mode, epsilon=1e-6, dtype=opts.dtype, name=name)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with drop path."""
  heads: int
  mlp_dim: int
  drop_path: float = 0.0
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:  # [G, S, N, D]
    dtype = self.options.dtype
    y = Attention(self.heads, dtype, name="attn")(_ln(self.options, "norm1")(x))
    x = x + DropPath(self.drop_path)(y, train)
    y = Mlp(self.mlp_dim, dtype, name="mlp")(_ln(self.options, "norm2")(x))
    return x + DropPath(self.drop_path)(y, train)


class VisionTransformer(nn.Module):
  """ViT: images [B, H, W, 3] or [G, S, H, W, 3] -> class-token features [B, D] or [G, S, D]."""
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  options: EncoderOptions = EncoderOptions()  # norm mode, dtype, the patch embedding's conv lowering (options.py)
  drop_path_rate: float = 0.0
  default_size: int = 224  # native resolution: the position embeddings' grid is default_size / patch_size
  remat: bool = False  # recompute each block's activations in the backward pass

  @property
  def min_size(self) -> int:
    return self.patch_size

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    p, d, opts = self.patch_size, self.width, self.options
    if d % self.heads:
      raise ValueError(f"vit: width {d} is not divisible by heads {self.heads}; pick heads that divide it")
    if self.default_size % p:
      raise ValueError(f"vit: default_size {self.default_size} is not a multiple of patch_size {p}")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"vit: drop_path_rate must be in [0, 1); got {self.drop_path_rate}")
    x, ungrouped = group_images(images, self.min_size, "vit")  # [G, S, H, W, 3]
    h, w = x.shape[-3], x.shape[-2]
    if h % p or w % p:
      raise ValueError(
          f"vit: image size {h}x{w} is not a multiple of the patch size {p}; resize or crop to a multiple of {p}")

    x = Conv(d, p, p, padding=0, use_bias=True, dtype=opts.dtype, impl=opts.conv_impl,
             kernel_init=nn.initializers.lecun_normal(), name="patch_embed")(x)  # [G, S, h/p, w/p, D]
    g, s, gh, gw = x.shape[:4]
    x = x.reshape(g, s, gh * gw, d)
    n0 = self.default_size // p
    # timm's shapes, [1, 1, D] and [1, 1 + n0·n0, D], so conversion is a plain copy
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + n0 * n0, d), jnp.float32)
    pos = resample_pos_embed(pos[0], (n0, n0), (gh, gw))  # [1 + gh·gw, D]
    cls = jnp.broadcast_to(cls.astype(x.dtype), (g, s, 1, d))
    x = jnp.concatenate([cls, x], axis=2) + pos.astype(x.dtype)  # [G, S, 1 + N, D]

    block = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock  # arg 2: train
    for i in range(self.depth):
      rate = self.drop_path_rate * i / max(self.depth - 1, 1)  # timm: linspace(0, rate, depth)
      x = block(self.heads, self.mlp_dim, rate, opts, name=f"blocks_{i}")(x, train)
    x = _ln(opts, "norm")(x)
    x = jax.lax.index_in_dim(x, 0, x.ndim - 2, keepdims=False)  # the class token; static, as qkv above
    return ungroup(x.astype(jnp.float32), ungrouped)  # [B, D] or [G, S, D]


_BASES = {  # name -> (width, depth, heads); head dim 64 in all three
    "vit_tiny_patch16_224": (192, 12, 3),
    "vit_small_patch16_224": (384, 12, 6),
    "vit_base_patch16_224": (768, 12, 12),
}


def _factory(name: str) -> Callable[..., nn.Module]:
  base_width, base_depth, base_heads = _BASES[name]

  def make(width_mult: float = 1.0, depth_mult: float = 1.0, norm_mode: str = "residual", dtype: Any = None,
           drop_path_rate: float = 0.0, *, width: int | None = None, depth: int | None = None,
           heads: int | None = None, mlp_dim: int | None = None, patch_size: int = 16,
           image_size: int = 224, remat: bool = False, conv_impl: str = "auto",
           bn_stats: str = "group") -> VisionTransformer:
    """width_mult scales the number of heads at a fixed head dim (64); explicit width/heads/... win."""
    options = validate_options(conv_impl, norm_mode, dtype, bn_stats)
    if bn_stats != "group":  # the CNN configs' key; a ViT's LayerNorms have no batch statistics
      raise ValueError(f"{name}: bn_stats={bn_stats!r} does not apply to a ViT (LayerNorm, no batch statistics); "
                       "leave config.model.image.bn_stats at 'group'")
    if width_mult <= 0 or depth_mult <= 0:
      raise ValueError(f"{name}: width_mult and depth_mult must be > 0; got {width_mult}, {depth_mult}")
    head_dim = base_width // base_heads
    heads = heads or (max(1, round(base_heads * width_mult)) if width is None else base_heads)
    width = width or heads * head_dim
    depth = depth or max(1, int(math.ceil(base_depth * depth_mult)))
    return VisionTransformer(width, depth, heads, mlp_dim or 4 * width, patch_size, options, drop_path_rate,
                             image_size, remat=remat)
  make.__doc__ = f"timm's {name}; overrides give scaled or tiny variants."
  return make


MODELS: dict[str, Callable[..., nn.Module]] = {name: _factory(name) for name in _BASES}
