"""Folding an image tower for deployment: eval-mode norms and generated params baked into static weights.

BatchNorm (CNNs): y = conv(x)·a + b with a = scale/sqrt(var + eps), b = bias - mean·a, where scale and bias
already include the hypernet's generated Δ. Folding scales the conv kernel by a (per output channel, HWIO's
last axis) and gives the conv the bias b; the norm disappears. LayerNorm (ViTs) cannot fold into a matmul
(it normalises each token), so it stays with its effective scale and bias baked in.

Which conv feeds which norm is read off one abstract forward pass (the norm's input is the conv's output
object), not from a table of layer names, so every encoder in the registry folds with the same code. The
folded tower runs the same module with BatchNorms skipped and conv biases added (`apply_folded`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax.models import conv as conv_lib
from hyperclip_jax.models import layers

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Norm:
  path: Path
  kind: str  # "batch" | "layer"
  mode: str  # "residual" | "replace"
  epsilon: float
  conv: Path | None  # the conv whose output is this norm's input (None: not a conv output)
  conv_has_bias: bool


def trace_norms(module: nn.Module, variables: dict[str, Any], image_size: int) -> list[_Norm]:
  """Every ConditionedNorm of `module` with the conv (if any) that feeds it, in call order."""
  conv_outputs: dict[int, tuple[Path, bool]] = {}  # id(output tracer) -> (conv path, conv has its own bias)
  norms: list[_Norm] = []
  keep_alive = []  # tracers stay referenced so their ids cannot be reused within the trace

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(mod, conv_lib.Conv):
      conv_outputs[id(out)] = (tuple(mod.path), mod.use_bias)
      keep_alive.append(out)
    elif isinstance(mod, layers.ConditionedNorm):
      conv, has_bias = conv_outputs.get(id(args[0]), (None, False))
      norms.append(_Norm(tuple(mod.path), mod.kind, mod.mode, mod.epsilon, conv, has_bias))
    return out

  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, images)
  return norms


def _get(tree: dict[str, Any], path: Path) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _pop(tree: dict[str, Any], path: Path) -> None:
  """Removes tree[path] and any parent dicts that become empty."""
  parents = [tree]
  for k in path[:-1]:
    parents.append(parents[-1][k])
  del parents[-1][path[-1]]
  for parent, k in zip(reversed(parents[:-1]), reversed(path[:-1])):
    if parent[k]:
      break
    del parent[k]


def _copy(tree: Any) -> Any:
  return jax.tree.map(lambda x: x, tree)


def _effective_affine(norm: _Norm, params: dict[str, Any], generated: dict[str, Any] | None) -> tuple[Any, Any]:
  """The norm's scale and bias [C] with one generated set (leaves [C] or [1, C]) applied."""
  p = _get(params, norm.path)
  gamma, beta = p["scale"], p["bias"]
  if generated is None:
    return gamma, beta
  g = _get(generated, norm.path)
  dscale, dbias = g["scale"].reshape(-1), g["bias"].reshape(-1)
  if dscale.shape != gamma.shape:
    raise ValueError(f"fold: generated params of {'/'.join(norm.path)} hold {dscale.shape[0]} values for "
                     f"{gamma.shape[0]} channels; export needs exactly one generated set")
  if norm.mode == "residual":
    return gamma * (1.0 + dscale), beta + dbias
  return 1.0 + dscale, dbias


def fold(norms: list[_Norm], variables: dict[str, Any]) -> dict[str, Any]:
  """{'params', 'batch_stats'?, 'generated'?} -> folded params: no BatchNorm, no stats, no generated.

  Raises ValueError for a BatchNorm whose input is not a conv output (nothing to fold it into).
  """
  params = jax.device_get(variables["params"])
  stats = jax.device_get(variables.get("batch_stats") or {})
  generated = jax.device_get(variables.get(layers.GENERATED))
  folded = _copy(params)  # new dicts, same leaves: the caller's tree is never modified
  for norm in norms:
    scale, bias = _effective_affine(norm, params, generated)
    if norm.kind == "layer":
      _get(folded, norm.path).update(scale=scale, bias=bias)
      continue
    if norm.conv is None:
      raise ValueError(f"fold: BatchNorm {'/'.join(norm.path)} does not follow a convolution; it cannot be "
                       "folded (keep a conv directly before every BatchNorm)")
    s = _get(stats, norm.path)
    a = scale / np.sqrt(s["var"] + norm.epsilon)  # [C]
    b = bias - s["mean"] * a
    conv = _get(folded, norm.conv)
    conv_bias = conv["bias"] * a if norm.conv_has_bias else 0.0
    conv.update(kernel=conv["kernel"] * a, bias=conv_bias + b)
    _pop(folded, norm.path)
  return folded


def apply_folded(module: nn.Module, norms: list[_Norm], folded: dict[str, Any], images: jax.Array) -> jax.Array:
  """The eval-mode forward of `module` on folded params: BatchNorms skipped, folded conv biases added."""
  skipped = {n.path for n in norms if n.kind == "batch"}
  biased = {n.conv for n in norms if n.kind == "batch" and not n.conv_has_bias}

  def run(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == "__call__" and tuple(mod.path) in skipped:
      return args[0]
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and tuple(mod.path) in biased:
      out = out + _get(folded, tuple(mod.path))["bias"].astype(out.dtype)
    return out

  with nn.intercept_methods(run):
    return module.apply({"params": folded}, images, train=False)
