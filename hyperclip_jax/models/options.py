"""The options every block of an image encoder shares, checked once and passed down as one value.

An encoder's factory (efficientnet.create, mobilenetv3.MODELS, vit.MODELS) calls `validate_options` on its
keyword arguments and hands the result to the top-level module, which gives the same object to every block.
Blocks read `options.conv_impl` for their Conv layers (conv.py) and `options.norm_mode`, `options.bn_stats`,
`options.dtype` for their ConditionedNorms (layers.py). None of them is a parameter: the parameter tree is the
same under any options, only the computation's form or precision changes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from hyperclip_jax.models.conv import CONV_IMPLS
from hyperclip_jax.models.layers import BN_STATS, NORM_MODES

DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes; None = the input's (float32 images)


@dataclasses.dataclass(frozen=True)
class EncoderOptions:
  """How an image encoder computes, the same for all its blocks (build it with validate_options)."""
  conv_impl: str = "auto"  # CONV_IMPLS: the convolutions' lowering (conv.Conv); same math
  norm_mode: str = "residual"  # NORM_MODES: how a generated affine combines with the norm's own (ConditionedNorm)
  dtype: Any = None  # compute dtype of convs and norms (params stay float32); None = the input's
  bn_stats: str = "group"  # BN_STATS: BatchNorm training statistics per group of images or over the batch


def _dtype_name(dtype: Any) -> str | None:
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    return None


def validate_options(conv_impl: str = "auto", norm_mode: str = "residual", dtype: Any = None,
                     bn_stats: str = "group", *, keys: Mapping[str, str] | None = None) -> EncoderOptions:
  """Checks the four values once and returns them as EncoderOptions (dtype as a jnp.dtype, or None).

  Raises ValueError with one line naming the key, its value and the allowed values. `keys` renames the keys in
  that message (e.g. {'conv_impl': 'config.model.conv_impl'}); unnamed ones keep their field name.
  """
  keys = keys or {}

  def refuse(field: str, value: Any, allowed: tuple[str, ...]) -> ValueError:
    return ValueError(f"{keys.get(field, field)}={value!r} is unknown; known: {', '.join(allowed)}")

  for field, value, allowed in (("conv_impl", conv_impl, CONV_IMPLS), ("norm_mode", norm_mode, NORM_MODES),
                                ("bn_stats", bn_stats, BN_STATS)):
    if not isinstance(value, str) or value not in allowed:
      raise refuse(field, value, allowed)
  if dtype is not None:
    if _dtype_name(dtype) not in DTYPES:
      raise refuse("dtype", dtype, DTYPES + ("None",))
    dtype = jnp.dtype(dtype)
  return EncoderOptions(conv_impl=conv_impl, norm_mode=norm_mode, dtype=dtype, bn_stats=bn_stats)


__all__ = ("DTYPES", "EncoderOptions", "validate_options")
