"""The image encoders' 2-D convolution: one module (`Conv`) and one function (`conv2d`), several XLA lowerings.

The parameters and the math are the same whatever the lowering (`impl`, one of CONV_IMPLS); only the XLA program
differs, because XLA's CPU depthwise and 1x1 convolutions are many times slower than equivalent forms (DESIGN.md,
docs/benchmarks.md): 1x1 convolutions become dots, depthwise ones shifted multiply-adds with a written-out
gradient, non-overlapping patches a reshape and a dot.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any

CONV_IMPLS = ("auto", "native", "cpu_fast")

# Bytes of x per step of the depthwise taps' gradient's outer loop (_tap_grads): blocks that stay in cache while
# the k·k taps read them (b0's big layers at 224 px: 2-2.7x faster than one loop over whole tensors; the whole b0
# step 4.9 -> 4.4 s, both block sizes built in one process and timed interleaved; docs/benchmarks.md). The
# default of Conv.tap_block_bytes and conv2d's tap_block_bytes; a benchmark or test passes its own there.
TAP_GRAD_BLOCK_BYTES = 3 << 20


def same_padding(kernel: int, stride: int, dilation: int = 1) -> int:
  """timm's symmetric padding for PyTorch-style (non-TF) models: ((s - 1) + d·(k - 1)) // 2."""
  return ((stride - 1) + dilation * (kernel - 1)) // 2


def resolve_conv_impl(impl: str) -> str:
  """The form `impl` takes on this process's default backend ("auto" -> "cpu_fast" on CPU, "native" on GPU/TPU),
  for reports; raises on an unknown name. Programs themselves decide "auto" when lowered (see conv2d)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl {impl!r} is unknown; known: {', '.join(CONV_IMPLS)}")
  if impl == "auto":
    return "cpu_fast" if jax.default_backend() == "cpu" else "native"
  return impl


class Conv(nn.Module):
  """2-D convolution over [G, S, H, W, Cin] with timm's symmetric padding and flax's HWIO kernel.

  Same parameters and math under every lowering `impl`; only the XLA program differs:
    native    lax.conv_general_dilated for every conv (what GPU/TPU libraries are fast at);
    cpu_fast  1x1 -> a dot over channels (strided by slicing); depthwise -> k·k shifted multiply-adds;
              non-overlapping patches (kernel == stride, no padding) -> reshape + dot; else native;
    auto      cpu_fast on CPU, native elsewhere, decided by the platform the program is lowered for
              (lax.platform_dependent), so an AOT export for several platforms carries each its own form.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  use_bias: bool = False
  padding: int | None = None  # None -> same_padding(kernel_size, strides)
  dtype: Dtype | None = None
  impl: str = "auto"
  kernel_init: Any = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  tap_block_bytes: int = TAP_GRAD_BLOCK_BYTES  # cpu_fast depthwise: row-block budget of the taps' gradient

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin, k, s = x.shape[-1], self.kernel_size, self.strides
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"Conv: {cin} input / {self.features} output channels not divisible by groups={self.groups}")
    kernel = self.param("kernel", self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32)
    pad = same_padding(k, s) if self.padding is None else self.padding
    dtype = self.dtype or x.dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    y = conv2d(x, kernel, s, pad, self.groups, self.impl, self.tap_block_bytes)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(dtype)
    return y


def conv2d(x: Array, kernel: Array, stride: int, pad: int, groups: int, impl: str,
           tap_block_bytes: int = TAP_GRAD_BLOCK_BYTES) -> Array:
  """x [..., H, W, Cin] * kernel HWIO [k, k, Cin/groups, Cout] with symmetric padding; impl in CONV_IMPLS.

  tap_block_bytes: the bytes of x per block of rows in the cpu_fast depthwise taps' gradient (_tap_grads)."""
  k, cin, cout = kernel.shape[0], x.shape[-1], kernel.shape[-1]
  if impl == "auto":
    # Both forms are traced; lowering for one platform emits only that platform's (no runtime branch), and a
    # multi-platform export selects on the platform it runs on. Not jax.default_backend(): an AOT-lowered or
    # exported program may run on another platform than the one that traced it.
    def form(name):
      return lambda x, kernel: conv2d(x, kernel, stride, pad, groups, name, tap_block_bytes)
    return lax.platform_dependent(x, kernel, cpu=form("cpu_fast"), default=form("native"))
  if impl == "cpu_fast":
    if k == 1 and groups == 1:
      if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)])
      if stride > 1:
        x = x[..., ::stride, ::stride, :]
      return _pointwise_dot(x, kernel[0, 0])
    if groups == cin == cout and groups > 1:
      return _depthwise_shift_add(x, kernel[:, :, 0, :], stride, pad, tap_block_bytes)
    if groups == 1 and k == stride and pad == 0 and x.shape[-3] % k == 0 and x.shape[-2] % k == 0:
      return _patchify_dot(x, kernel)
  elif impl != "native":
    raise ValueError(f"conv impl {impl!r} is unknown; known: {', '.join(CONV_IMPLS)}")
  lead = x.shape[:-3]
  x4 = x.reshape((-1,) + x.shape[-3:])
  y = lax.conv_general_dilated(
      x4, kernel, window_strides=(stride, stride), padding=[(pad, pad), (pad, pad)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  return y.reshape(lead + y.shape[1:])


def _pad_hw(x: Array, h: tuple[int, int], w: tuple[int, int], interior: int = 0) -> Array:
  """Zero-pads the spatial axes of [..., H, W, C] by (low, high) each (a negative high crops; interior dilates)."""
  cfg = [(0, 0, 0)] * (x.ndim - 3) + [(*h, interior), (*w, interior), (0, 0, 0)]
  return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _tap_window(xp: Array, i: int, j: int, stride: int, ho: int, wo: int) -> Array:
  """The [..., ho, wo, C] window of padded xp that tap (i, j) of a strided depthwise conv reads."""
  a = xp.ndim - 3
  xp = lax.slice_in_dim(xp, i, i + (ho - 1) * stride + 1, stride, axis=a)
  return lax.slice_in_dim(xp, j, j + (wo - 1) * stride + 1, stride, axis=a + 1)


def _shift_add(xp: Array, taps: Array, stride: int, ho: int, wo: int) -> Array:
  """sum over taps (i, j) of window(i, j) * taps[i, j]: one fusion reading xp k·k times."""
  k = taps.shape[0]
  out = None
  for i in range(k):
    for j in range(k):
      term = _tap_window(xp, i, j, stride, ho, wo) * taps[i, j]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift_add(x: Array, taps: Array, stride: int, pad: int, block_bytes: int) -> Array:
  """Depthwise conv as a sum of k·k shifted, strided windows of the padded input times per-channel taps [k, k, C].

  The gradients are written out (_depthwise_bwd) rather than left to autodiff, for XLA's CPU fusion: autodiff
  reuses the forward's k·k windows in the taps' gradient, so XLA materialises every window as its own buffer
  (k·k full-size writes per layer, each recomputing the BatchNorm and activation before it); its input
  gradient is a sum of k·k padded copies. Here the forward's windows feed only the forward's one fusion, the
  input gradient is a shift-add over the cotangent, padded (and for stride > 1 dilated) once, and the taps'
  gradient is a loop over blocks of rows (block_bytes of x each), each a loop of k·k reductions over one padded
  cotangent block.
  """
  return _depthwise_fwd(x, taps, stride, pad, block_bytes)[0]


def _depthwise_fwd(x: Array, taps: Array, stride: int, pad: int,
                   block_bytes: int) -> tuple[Array, tuple[Array, Array]]:
  k = taps.shape[0]
  ho, wo = (x.shape[-3] + 2 * pad - k) // stride + 1, (x.shape[-2] + 2 * pad - k) // stride + 1
  return _shift_add(_pad_hw(x, (pad, pad), (pad, pad)), taps, stride, ho, wo), (x, taps)


def _depthwise_bwd(stride: int, pad: int, block_bytes: int, res: tuple[Array, Array],
                   g: Array) -> tuple[Array, Array]:
  """With gd = g dilated by the stride and padded by k - 1 - pad (so that it aligns with x):
    dx            = sum over (i, j) of window(i, j) of gd · taps[k-1-i, k-1-j]   (a stride-1 shift-add)
    dtaps[k-1-i, k-1-j] = sum over batch and positions of x · window(i, j) of gd.
  The taps' gradient reads gq (gd padded one more on every side) through dynamic slices inside loops
  (_tap_grads): unrolled, XLA merged these windows with dx's and materialised k·k of them."""
  x, taps = res
  k = taps.shape[0]
  h, w = x.shape[-3], x.shape[-2]
  ho, wo = g.shape[-3], g.shape[-2]
  lo, hi_h, hi_w = k - 1 - pad, h + pad - (ho - 1) * stride - 1, w + pad - (wo - 1) * stride - 1
  gd = _pad_hw(g, (lo, hi_h), (lo, hi_w), stride - 1)
  dx = _shift_add(gd, taps[::-1, ::-1], 1, h, w)
  gq = _pad_hw(g, (lo + 1, hi_h + 1), (lo + 1, hi_w + 1), stride - 1)
  return dx, _tap_grads(x, gq, k, block_bytes).reshape(taps.shape).astype(taps.dtype)


def _tap_grads(x: Array, gq: Array, k: int, block_bytes: int) -> Array:
  """[k·k, C]: row t = (i, j) is the sum over batch and positions of x · the window of gq at (k - i, k - j).

  A loop over blocks of x's rows (the largest divisor of H whose block is at most block_bytes), and
  in each a loop over the taps reading the block of gq that covers it (rows + k). Sums are in float32."""
  lead = x.ndim - 3
  h = x.shape[lead]
  row_bytes = math.prod(x.shape) // h * x.dtype.itemsize
  rows = max(r for r in range(1, h + 1) if h % r == 0 and (r == 1 or r * row_bytes <= block_bytes))
  block_shape = x.shape[:lead] + (rows,) + x.shape[lead + 1:]
  axes = tuple(range(x.ndim - 1))

  def block(acc, b):
    xb = lax.dynamic_slice_in_dim(x, b * rows, rows, axis=lead)
    gb = lax.dynamic_slice_in_dim(gq, b * rows, rows + k, axis=lead)

    def tap(_, t):
      start = (0,) * lead + (k - t // k, k - t % k, 0)
      return None, jnp.sum(xb * lax.dynamic_slice(gb, start, block_shape), axis=axes, dtype=jnp.float32)
    return acc + lax.scan(tap, None, jnp.arange(k * k))[1], None

  acc = jnp.zeros((k * k, x.shape[-1]), jnp.float32)
  return lax.scan(block, acc, jnp.arange(h // rows))[0]


_depthwise_shift_add.defvjp(_depthwise_fwd, _depthwise_bwd)


def _patchify_dot(x: Array, kernel: Array) -> Array:
  """Non-overlapping k x k patches (stride k, no padding) as one dot: [..., H/k, W/k, k·k·Cin] @ [k·k·Cin, Cout]."""
  k, cin = kernel.shape[0], x.shape[-1]
  lead, h, w = x.shape[:-3], x.shape[-3], x.shape[-2]
  x = x.reshape(lead + (h // k, k, w // k, k, cin))
  n = len(lead)
  x = jnp.moveaxis(x, n + 2, n + 1)  # [..., H/k, W/k, k, k, Cin]: the patch in HWI order, as the kernel
  x = x.reshape(lead + (h // k, w // k, k * k * cin))
  return _pointwise_dot(x, kernel.reshape(k * k * cin, -1))


def _pointwise_dot(x: Array, kernel: Array) -> Array:
  """[..., C] @ [C, D] as one 2-D dot over the flattened leading axes. The same math as an einsum over the
  leading axes (up to summation order), but XLA's CPU backend lowers the weight gradient of the 2-D form to one
  dot that contracts both operands over their major axis as they lie, where for the N-d einsum it first transposes
  the cotangent into a [D, N] copy: 1.2-2.1x faster gradients of b0's 1x1 convolutions at 224 px
  (docs/benchmarks.md)."""
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel)
  return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


__all__ = ("CONV_IMPLS", "Conv", "TAP_GRAD_BLOCK_BYTES", "conv2d", "resolve_conv_impl", "same_padding")
