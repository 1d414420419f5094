"""MobileNetV3 small/large, parameter for parameter timm's `mobilenetv3_{small,large}_100`.

Same blocks, channel rounding, symmetric padding, BatchNorm eps (1e-5) and "efficient head" as timm
(`_gen_mobilenet_v3`): stem conv 3x3/2 -> depthwise-separable / inverted-residual blocks (SE with a ReLU
reduce and hard-sigmoid gate) -> 1x1 conv to 576/960 -> global pool -> 1x1 `conv_head` with bias ->
hard-swish. The output is timm's `forward_head(..., pre_logits=True)`: the conv_head activations,
1024 (small) / 1280 (large) wide. Every BatchNorm is a ConditionedNorm, so the hypernetwork can generate
its scale and bias. Activations stay grouped as [G, S, H, W, C] throughout (see layers.py); conv_impl,
norm_mode, dtype and bn_stats travel to every block as one EncoderOptions (options.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

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


class _Stack(NamedTuple):
  """One block definition of a stage, repeated `repeats` times (only the first repeat strides)."""
  kind: str  # "ds" depthwise-separable | "ir" inverted residual | "cn" conv-bn-act
  repeats: int
  kernel: int
  stride: int
  expand: float
  out: int
  se: bool
  act: str  # "relu" | "hard_swish"


_S = _Stack
# The per-stage block definitions of timm's `_gen_mobilenet_v3` (MobileNetV3 paper, tables 1 and 2).
_ARCHS: dict[str, tuple[tuple[_Stack, ...], ...]] = {
    "large": (
        (_S("ds", 1, 3, 1, 1.0, 16, False, "relu"),),
        (_S("ir", 1, 3, 2, 4.0, 24, False, "relu"), _S("ir", 1, 3, 1, 3.0, 24, False, "relu")),
        (_S("ir", 3, 5, 2, 3.0, 40, True, "relu"),),
        (_S("ir", 1, 3, 2, 6.0, 80, False, "hard_swish"), _S("ir", 1, 3, 1, 2.5, 80, False, "hard_swish"),
         _S("ir", 2, 3, 1, 2.3, 80, False, "hard_swish")),
        (_S("ir", 2, 3, 1, 6.0, 112, True, "hard_swish"),),
        (_S("ir", 3, 5, 2, 6.0, 160, True, "hard_swish"),),
        (_S("cn", 1, 1, 1, 1.0, 960, False, "hard_swish"),),
    ),
    "small": (
        (_S("ds", 1, 3, 2, 1.0, 16, True, "relu"),),
        (_S("ir", 1, 3, 2, 4.5, 24, False, "relu"), _S("ir", 1, 3, 1, 3.67, 24, False, "relu")),
        (_S("ir", 1, 5, 2, 4.0, 40, True, "hard_swish"), _S("ir", 2, 5, 1, 6.0, 40, True, "hard_swish")),
        (_S("ir", 2, 5, 1, 3.0, 48, True, "hard_swish"),),
        (_S("ir", 3, 5, 2, 6.0, 96, True, "hard_swish"),),
        (_S("cn", 1, 1, 1, 1.0, 576, False, "hard_swish"),),
    ),
}
_HEAD_FEATURES = {"large": 1280, "small": 1024}  # timm's num_features; not scaled by the width multiplier
_ACTS: dict[str, Callable[[Array], Array]] = {"relu": jax.nn.relu, "hard_swish": jax.nn.hard_swish}


class BlockSpec(NamedTuple):
  """One built block: channels already rounded, stride already resolved."""
  kind: str
  kernel: int
  stride: int
  cin: int
  mid: int  # expanded channels (= cin for "ds", = out for "cn")
  out: int
  se_reduce: int  # 0 = no squeeze-excite
  act: str


def scale_repeats(repeats: Sequence[int], depth_mult: float) -> list[int]:
  """timm's per-stage depth scaling ('ceil'): scale the stage total, hand it out last definition first."""
  total = sum(repeats)
  left = int(math.ceil(total * depth_mult))
  scaled = []
  for r in reversed(repeats):
    rs = max(1, round(r / total * left))  # Python's round (half to even), as timm
    scaled.append(rs)
    total -= r
    left -= rs
  return scaled[::-1]


def build_blocks(variant: str, width_mult: float = 1.0,
                 depth_mult: float = 1.0) -> tuple[int, list[list[BlockSpec]]]:
  """Stem width and per-stage block specs, with timm's channel rounding (`round_channels`)."""
  stem = 16 if width_mult < 0.75 else make_divisible(16 * width_mult)  # timm: fix_stem below 0.75
  cin, stages = stem, []
  for stack_defs in _ARCHS[variant]:
    stage = []
    for d, reps in zip(stack_defs, scale_repeats([d.repeats for d in stack_defs], depth_mult)):
      out = make_divisible(d.out * width_mult)
      for _ in range(reps):
        stride = d.stride if not stage else 1
        mid = {"ds": cin, "ir": make_divisible(cin * d.expand), "cn": out}[d.kind]
        se_reduce = make_divisible(mid * 0.25) if d.se else 0
        stage.append(BlockSpec(d.kind, d.kernel, stride, cin, mid, out, se_reduce, d.act))
        cin = out
    stages.append(stage)
  return stem, stages


def _depthwise_init() -> Any:
  # timm's init uses fan_out // groups = k·k for depthwise kernels; for HWIO [k, k, 1, C] that is fan_in.
  return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(opts: EncoderOptions, *args: Any, **kwargs: Any) -> Conv:
  return Conv(*args, dtype=opts.dtype, impl=opts.conv_impl, **kwargs)


def _bn(opts: EncoderOptions, name: str) -> ConditionedNorm:
  return ConditionedNorm("batch", opts.norm_mode, dtype=opts.dtype, stats=opts.bn_stats, name=name)


class SqueezeExcite(nn.Module):
  """x · hard_sigmoid(W2 relu(W1 mean_hw(x))), both 1x1 convs with bias."""
  reduce: int
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [G, S, H, W, C]
    conv = functools.partial(_conv, self.options, use_bias=True)
    s = x.astype(jnp.float32).mean(axis=(-3, -2), keepdims=True).astype(x.dtype)  # [G, S, 1, 1, C]
    s = jax.nn.relu(conv(self.reduce, 1, name="conv_reduce")(s))
    s = conv(x.shape[-1], 1, name="conv_expand")(s)
    return x * jax.nn.hard_sigmoid(s)


class Block(nn.Module):
  """timm's DepthwiseSeparableConv ("ds"), InvertedResidual ("ir") or ConvBnAct ("cn"), same param names."""
  spec: BlockSpec
  drop_path: float = 0.0
  options: EncoderOptions = EncoderOptions()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:  # [G, S, H, W, cin] -> [G, S, H', W', out]
    b, act, opts = self.spec, _ACTS[self.spec.act], self.options
    conv = functools.partial(_conv, opts)
    norm = functools.partial(_bn, opts)
    dw = functools.partial(conv, b.mid, b.kernel, b.stride, groups=b.mid, kernel_init=_depthwise_init(),
                           name="conv_dw")
    shortcut = x
    if b.kind == "cn":
      return act(norm("bn1")(conv(b.out, b.kernel, b.stride, name="conv")(x), train))
    if b.kind == "ds":
      x = act(norm("bn1")(dw()(x), train))
      if b.se_reduce:
        x = SqueezeExcite(b.se_reduce, opts, name="se")(x)
      x = norm("bn2")(conv(b.out, 1, name="conv_pw")(x), train)
    elif b.kind == "ir":
      x = act(norm("bn1")(conv(b.mid, 1, name="conv_pw")(x), train))
      x = act(norm("bn2")(dw()(x), train))
      if b.se_reduce:
        x = SqueezeExcite(b.se_reduce, opts, name="se")(x)
      x = norm("bn3")(conv(b.out, 1, name="conv_pwl")(x), train)
    else:
      raise ValueError(f"MobileNetV3 block kind {b.kind!r} is unknown; known: ds, ir, cn")
    if b.stride == 1 and b.cin == b.out:
      x = DropPath(self.drop_path)(x, train) + shortcut
    return x


class MobileNetV3(nn.Module):
  """MobileNetV3: images [B, H, W, 3] or [G, S, H, W, 3] -> pre-logits features [B, F] or [G, S, F]."""
  variant: str = "large"  # "large" | "small"
  width_mult: float = 1.0  # timm's channel_multiplier
  depth_mult: float = 1.0  # timm's depth_multiplier ('ceil' per stage)
  head_features: int | None = None  # None -> timm's 1280 (large) / 1024 (small)
  options: EncoderOptions = EncoderOptions()  # conv lowering, norm mode, dtype, BN statistics (options.py)
  drop_path_rate: float = 0.0
  default_size: int = 224
  min_size: int = 32
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    label, opts = f"mobilenetv3_{self.variant}", self.options
    if self.variant not in _ARCHS:
      raise ValueError(f"MobileNetV3 variant {self.variant!r} is unknown; known: {', '.join(_ARCHS)}")
    if self.width_mult <= 0 or self.depth_mult <= 0:
      raise ValueError(f"{label}: width_mult and depth_mult must be > 0; got {self.width_mult}, {self.depth_mult}")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"{label}: drop_path_rate must be in [0, 1); got {self.drop_path_rate}")
    x, ungrouped = group_images(images, self.min_size, label)  # [G, S, H, W, 3]
    stem, stages = build_blocks(self.variant, self.width_mult, self.depth_mult)
    total = sum(len(s) for s in stages)

    x = _conv(opts, stem, 3, 2, name="conv_stem")(x)
    x = jax.nn.hard_swish(_bn(opts, "bn1")(x, train))
    idx = 0
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block  # arg 2: train
    for i, stage in enumerate(stages):
      for j, spec in enumerate(stage):
        # timm: drop-path rate grows linearly with the global block index (over all blocks, head conv too)
        x = block(spec, self.drop_path_rate * idx / total, opts, name=f"blocks_{i}_{j}")(x, train)
        idx += 1

    x = global_avg_pool(x.astype(jnp.float32)).astype(x.dtype)[..., None, None, :]  # [G, S, 1, 1, C]
    features = self.head_features or _HEAD_FEATURES[self.variant]
    x = jax.nn.hard_swish(_conv(opts, features, 1, use_bias=True, name="conv_head")(x))
    x = jnp.squeeze(x, (-3, -2))  # not x[..., 0, 0, :]: a gather under a symbolic batch (TFLite has none)
    return ungroup(x.astype(jnp.float32), ungrouped)  # [B, F] or [G, S, F]


def _factory(variant: str) -> Callable[..., nn.Module]:
  def make(width_mult: float = 1.0, depth_mult: float = 1.0, norm_mode: str = "residual", dtype: Any = None,
           drop_path_rate: float = 0.0, head_features: int | None = None, remat: bool = False,
           conv_impl: str = "auto", bn_stats: str = "group") -> MobileNetV3:
    options = validate_options(conv_impl, norm_mode, dtype, bn_stats)
    return MobileNetV3(variant, width_mult, depth_mult, head_features, options, drop_path_rate, remat=remat)
  make.__doc__ = f"timm's mobilenetv3_{variant}_100 (width_mult/depth_mult give scaled variants)."
  return make


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenetv3_large_100": _factory("large"),
    "mobilenetv3_small_100": _factory("small"),
}
