"""EfficientNet-B0/B1/B2 and TinyNet-A..E: one MBConv family with timm's exact shapes.

These are timm's PyTorch-style variants (`efficientnet_b0`, not `tf_efficientnet_b0`): symmetric padding,
BatchNorm eps 1e-5, SiLU. The parameter tree mirrors timm's module names so `convert_timm.from_timm` is a
table lookup: stem/{conv,bn} = conv_stem/bn1, blocks_{i}_{j}/... = blocks.i.j...., head/{conv,bn} =
conv_head/bn2. Activations stay grouped as [G, S, H, W, C] so every norm layer can take a per-group
generated affine from the hypernetwork.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperclip_jax.models.conv import Conv
from hyperclip_jax.models.layers import (
  ConditionedNorm,
  DropPath,
  global_avg_pool,
  group_images,
  make_divisible,
  ungroup,
)
from hyperclip_jax.models.options import EncoderOptions, validate_options

Array = jax.Array

# The B0 block string, one row per stage: (block type, repeats, kernel, stride, expansion, out channels).
# Every block has squeeze-excitation with ratio 0.25 of the block *input* channels.
_B0_STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
_SE_RATIO = 0.25
_STEM_CHS, _HEAD_CHS = 32, 1280

# name -> (width multiplier, depth multiplier, timm pretrained_cfg input size, family). timm builds
# efficientnet_* with `_gen_efficientnet` (depth 'ceil', stem and head scaled) and tinynet_* with
# `_gen_tinynet` (depth 'round', fixed 32-channel stem, head max(1280, scaled)).
_VARIANTS: dict[str, tuple[float, float, int, str]] = {
    "efficientnet_b0": (1.0, 1.0, 224, "efficientnet"),
    "efficientnet_b1": (1.0, 1.1, 240, "efficientnet"),
    "efficientnet_b2": (1.1, 1.2, 256, "efficientnet"),
    "tinynet_a": (1.0, 1.2, 192, "tinynet"),
    "tinynet_b": (0.75, 1.1, 188, "tinynet"),
    "tinynet_c": (0.54, 0.85, 184, "tinynet"),
    "tinynet_d": (0.54, 0.695, 152, "tinynet"),
    "tinynet_e": (0.51, 0.6, 106, "tinynet"),
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block of the trunk with its resolved channel counts."""
  kind: str  # "ds" (depthwise-separable) | "ir" (inverted residual / MBConv)
  in_chs: int
  out_chs: int
  mid_chs: int  # expanded width (== in_chs for "ds")
  se_chs: int  # squeeze-excitation bottleneck width
  kernel: int
  stride: int
  drop_path: float

  @property
  def has_skip(self) -> bool:
    return self.stride == 1 and self.in_chs == self.out_chs


def _stage_depth(repeats: int, depth_mult: float, trunc: str) -> int:
  if trunc == "round":
    return max(1, round(repeats * depth_mult))
  return int(math.ceil(repeats * depth_mult))


def build_arch(width_mult: float, depth_mult: float, family: str,
               drop_path_rate: float = 0.0) -> tuple[int, tuple[tuple[BlockSpec, ...], ...], int]:
  """Resolves timm's scaling rules into (stem channels, stages of BlockSpec, head channels)."""
  def round_chs(chs: int) -> int:
    return make_divisible(chs * width_mult, 8)

  if family not in ("efficientnet", "tinynet"):
    raise ValueError(f"EfficientNet family {family!r} is unknown; known: efficientnet, tinynet")
  if family == "tinynet":
    stem = _STEM_CHS  # timm: fix_stem=True
    head = max(_HEAD_CHS, round_chs(_HEAD_CHS))
    trunc = "round"
  else:
    stem = round_chs(_STEM_CHS)
    head = round_chs(_HEAD_CHS)
    trunc = "ceil"
  depths = [_stage_depth(r, depth_mult, trunc) for _, r, *_ in _B0_STAGES]
  total = sum(depths)
  stages, in_chs, idx = [], stem, 0
  for (kind, _, k, s, e, c), depth in zip(_B0_STAGES, depths):
    out_chs, blocks = round_chs(c), []
    for j in range(depth):
      mid = in_chs if kind == "ds" else make_divisible(in_chs * e)
      # timm divides the SE ratio by the expansion and applies it to the expanded width.
      se = round(mid * (_SE_RATIO / e))
      blocks.append(BlockSpec(kind, in_chs, out_chs, mid, se, k, s if j == 0 else 1,
                              drop_path_rate * idx / total))
      in_chs, idx = out_chs, idx + 1
    stages.append(tuple(blocks))
  return stem, tuple(stages), head


def _dw_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
  """He-normal over k·k taps: timm's depthwise fan-out k·k·C/groups (flax's fan_out would add a ·C)."""
  return nn.initializers.variance_scaling(2.0, "fan_in", "normal")(key, shape, dtype)


def _conv(opts: EncoderOptions, *args: Any, **kwargs: Any) -> Conv:
  return Conv(*args, dtype=opts.dtype, impl=opts.conv_impl, **kwargs)


def _bn(opts: EncoderOptions, name: str) -> ConditionedNorm:
  return ConditionedNorm("batch", opts.norm_mode, dtype=opts.dtype, stats=opts.bn_stats, name=name)


class ConvBnAct(nn.Module):
  """conv -> BatchNorm -> SiLU; the stem (3x3 s2) and the head (1x1)."""
  features: int
  kernel_size: int
  strides: int = 1
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = _conv(self.options, self.features, self.kernel_size, self.strides, name="conv")(x)
    return nn.silu(_bn(self.options, "bn")(x, train))


class SqueezeExcite(nn.Module):
  """x · sigmoid(expand(silu(reduce(mean_hw(x))))), per image."""
  rd_chs: int
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(_conv, self.options, use_bias=True)
    s = x.mean(axis=(-3, -2), keepdims=True)  # [G, S, 1, 1, C]
    s = conv(self.rd_chs, 1, name="conv_reduce")(s)
    s = conv(x.shape[-1], 1, name="conv_expand")(nn.silu(s))
    return x * nn.sigmoid(s)


class MBConvBlock(nn.Module):
  """timm's DepthwiseSeparableConv ("ds") or InvertedResidual ("ir") block with SE and drop path."""
  spec: BlockSpec
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    sp, opts = self.spec, self.options
    shortcut = x
    if sp.kind == "ir":
      x = _conv(opts, sp.mid_chs, 1, name="conv_pw")(x)
      x = nn.silu(_bn(opts, "bn1")(x, train))
    dw_bn, proj, proj_bn = ("bn2", "conv_pwl", "bn3") if sp.kind == "ir" else ("bn1", "conv_pw", "bn2")
    x = _conv(opts, sp.mid_chs, sp.kernel, sp.stride, groups=sp.mid_chs, kernel_init=_dw_init, name="conv_dw")(x)
    x = nn.silu(_bn(opts, dw_bn)(x, train))
    x = SqueezeExcite(sp.se_chs, opts, name="se")(x)
    x = _conv(opts, sp.out_chs, 1, name=proj)(x)
    x = _bn(opts, proj_bn)(x, train)  # linear bottleneck: no activation
    if sp.has_skip:
      x = DropPath(sp.drop_path)(x, train) + shortcut
    return x


class EfficientNet(nn.Module):
  """Images [B, H, W, 3] or [G, S, H, W, 3] -> pooled pre-logits features [B, C] or [G, S, C] (float32)."""
  stem_chs: int
  stages: tuple[tuple[BlockSpec, ...], ...]
  head_chs: int
  options: EncoderOptions = EncoderOptions()  # conv lowering, norm mode, dtype, BN statistics (options.py)
  default_size: int = 224
  min_size: int = 32
  variant: str = "efficientnet"  # timm name, for error messages
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    x, ungrouped = group_images(images, self.min_size, self.variant)  # [G, S, H, W, 3]
    x = ConvBnAct(self.stem_chs, 3, 2, self.options, name="stem")(x, train)
    block = nn.remat(MBConvBlock, static_argnums=(2,)) if self.remat else MBConvBlock  # arg 2: train
    for i, stage in enumerate(self.stages):
      for j, spec in enumerate(stage):
        x = block(spec, self.options, name=f"blocks_{i}_{j}")(x, train)
    x = ConvBnAct(self.head_chs, 1, 1, self.options, name="head")(x, train)
    return ungroup(global_avg_pool(x.astype(jnp.float32)), ungrouped)  # [G, S, C] -> [B, C] if ungrouped


_OPTIONS = ("conv_impl", "norm_mode", "dtype", "bn_stats")  # -> EncoderOptions
_OVERRIDES = ("width_mult", "depth_mult", "norm_mode", "dtype", "drop_path_rate", "min_size", "remat", "conv_impl",
              "bn_stats")


def create(name: str, **overrides: Any) -> EfficientNet:
  """Builds timm's `name`; `width_mult`/`depth_mult` multiply the model's own (tiny test variants)."""
  if name not in _VARIANTS:
    raise ValueError(f"EfficientNet variant {name!r} is unknown; known: {', '.join(_VARIANTS)}")
  unknown = sorted(set(overrides) - set(_OVERRIDES))
  if unknown:
    raise ValueError(f"{name}: unknown override(s) {', '.join(unknown)}; known: {', '.join(_OVERRIDES)}")
  width, depth, size, family = _VARIANTS[name]
  width_mult = float(overrides.get("width_mult", 1.0))
  depth_mult = float(overrides.get("depth_mult", 1.0))
  drop_path_rate = float(overrides.get("drop_path_rate", 0.0))
  if width_mult <= 0 or depth_mult <= 0:
    raise ValueError(f"{name}: width_mult and depth_mult must be > 0; got {width_mult}, {depth_mult}")
  if not 0.0 <= drop_path_rate < 1.0:
    raise ValueError(f"{name}: drop_path_rate must be in [0, 1); got {drop_path_rate}")
  options = validate_options(**{k: overrides[k] for k in _OPTIONS if k in overrides})
  stem, stages, head = build_arch(width * width_mult, depth * depth_mult, family, drop_path_rate)
  return EfficientNet(stem, stages, head, options, default_size=size, min_size=int(overrides.get("min_size", 32)),
                      variant=name, remat=bool(overrides.get("remat", False)))


MODELS: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(create, name) for name in _VARIANTS}
