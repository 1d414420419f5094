"""Capacity controls: the hypernetwork generates a low-rank update of one weight matrix of the image tower.

  linear  ΔW = U Vᵀ of the image tower's final projection (ImageTower's `head`, kernel [C, D])
  conv    ΔW = U Vᵀ of the encoder's last 1x1, stride-1, ungrouped convolution (EfficientNet / TinyNet: the
          head conv before the last BatchNorm; MobileNetV3: the conv_head after pooling), kernel [1, 1, Cin, Cout]

PAPER.md: the authors' code has runs `linear32` and `conv32`; we read "32" as the rank r
(config.model.hyper_rank). Each set of texts gets its own U [Cin, r] and V [Cout, r]: U is generated; V is
V0 + ΔV with ΔV generated and V0 a learned parameter drawn N(0, 1/r). The hypernetwork's output layer is
zero-initialised, so U = 0 and ΔW = 0 at step 0 (the model equals SigLIP exactly), while dL/dU = dL/dΔW · V
is not zero: with both factors zero neither would ever move (why LoRA starts one factor random).

The update is applied around the layer, not inside the encoder: flax method interception adds
x_g U_g V_gᵀ to the target layer's output for the images of group g, which for a dense layer or a 1x1
stride-1 conv is exactly the layer with kernel W + U_g V_gᵀ. At export one set's update folds into the
kernel (`fold_into`), before BatchNorm folding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperclip_jax.models import conv as conv_lib

Array = jax.Array
Path = tuple[str, ...]
VARIANTS = ("linear", "conv")


@dataclasses.dataclass(frozen=True)
class Target:
  """The layer whose kernel gets the low-rank update: its path in the image tower and its channels."""
  path: Path
  cin: int
  cout: int


def find_target(image: nn.Module, variant: str, image_size: int) -> Target:
  """The target layer of `variant` in the image tower `image` (ImageTower), read off one abstract forward."""
  if variant not in VARIANTS:
    raise ValueError(f"low-rank variant {variant!r} is unknown; known: {', '.join(VARIANTS)}")
  found: list[Target] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod, path = context.module, tuple(context.module.path)
    if context.method_name != "__call__":
      return out
    if variant == "linear" and isinstance(mod, nn.Dense) and path == ("head",):
      found.append(Target(path, int(args[0].shape[-1]), int(mod.features)))
    if (variant == "conv" and isinstance(mod, conv_lib.Conv) and mod.kernel_size == 1 and mod.strides == 1
        and mod.groups == 1 and not mod.padding):  # padding None or 0: 1x1 stride 1 pads nothing
      found.append(Target(path, int(args[0].shape[-1]), int(mod.features)))
    return out

  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: image.init(jax.random.PRNGKey(0), x), images)
  if not found:
    what = "a final projection named 'head'" if variant == "linear" else "a 1x1, stride-1 convolution"
    raise ValueError(f"config.model.variant={variant!r} needs {what} in the image tower; this encoder has none "
                     "(use variant='linear' or a CNN encoder)")
  return found[-1]  # conv: the last one called, i.e. the last stage's


def template(target: Target, rank: int) -> dict[str, jax.ShapeDtypeStruct]:
  """What the hypernetwork generates for one set: U [Cin, r] and ΔV [Cout, r]."""
  if rank < 1:
    raise ValueError(f"config.model.hyper_rank={rank} must be at least 1")
  return {"u": jax.ShapeDtypeStruct((target.cin, rank), jnp.float32),
          "v": jax.ShapeDtypeStruct((target.cout, rank), jnp.float32)}


def init_v0(rng: Array, target: Target, rank: int) -> Array:
  """The learned base of the V factor, N(0, 1/r): U Vᵀ's entries then have U's scale."""
  return jax.random.normal(rng, (target.cout, rank), jnp.float32) / jnp.sqrt(float(rank))


def factors(generated: dict[str, Array], v0: Array) -> dict[str, Array]:
  """Generated {u [G, Cin, r], v [G, Cout, r]} -> the update's factors: U = u, V = V0 + v."""
  return {"u": generated["u"], "v": v0 + generated["v"]}


def mean_factors(fac: dict[str, Array]) -> dict[str, Array]:
  """The mean over G sets of U_g V_gᵀ as one set of rank G·r: [U_1 .. U_G] / G times [V_1 .. V_G]ᵀ."""
  g, cin, r = fac["u"].shape
  u = jnp.moveaxis(fac["u"], 0, 1).reshape(1, cin, g * r) / g
  v = jnp.moveaxis(fac["v"], 0, 1).reshape(1, -1, g * r)
  return {"u": u, "v": v}


def _update(x: Array, fac: dict[str, Array], target: Target) -> Array:
  """x [G, ..., Cin] (or [N, Cin]: one group) -> x_g U_g V_gᵀ in float32, shaped like the layer's output."""
  u, v = fac["u"], fac["v"]
  grouped = x.ndim > 2
  g = x.shape[0] if grouped else 1
  if u.ndim != 3 or u.shape[0] not in (1, g) or u.shape[1] != target.cin or v.shape[1] != target.cout:
    raise ValueError(f"low-rank update of {'/'.join(target.path)}: factors u {tuple(u.shape)}, v {tuple(v.shape)} "
                     f"do not fit input {tuple(x.shape)} ({g} group(s), {target.cin} -> {target.cout} channels)")
  flat = x.astype(jnp.float32).reshape(g, -1, target.cin)
  y = jnp.matmul(jnp.matmul(flat, u), jnp.swapaxes(v, -1, -2))  # [G, n, Cout]
  return y.reshape(x.shape[:-1] + (target.cout,))


def apply(image: nn.Module, variables: dict[str, Any], images: Array, fac: dict[str, Array], target: Target,
          **kwargs: Any) -> Any:
  """image.apply(variables, images, **kwargs) with the target layer's kernel W + U_g V_gᵀ for group g."""

  def add_update(next_fun, args, kw, context):
    out = next_fun(*args, **kw)
    if context.method_name == "__call__" and tuple(context.module.path) == target.path:
      out = out + _update(args[0], fac, target).astype(out.dtype)
    return out

  with nn.intercept_methods(add_update):
    return image.apply(variables, images, **kwargs)


def fold_into(params: dict[str, Any], fac: dict[str, Array], target: Target) -> dict[str, Any]:
  """Image-tower params with one set's update baked in: kernel <- W + U Vᵀ (the caller's tree is not modified)."""
  u, v = fac["u"], fac["v"]
  if u.shape[0] != 1:
    raise ValueError(f"fold: the low-rank update holds {u.shape[0]} sets; export needs exactly one "
                     "(generate_mean)")
  out = jax.tree.map(lambda x: x, params)  # new dicts, same leaves
  node = out
  for k in target.path:
    node = node[k]
  kernel = node["kernel"]
  node["kernel"] = kernel + (u[0] @ v[0].T).reshape(kernel.shape).astype(kernel.dtype)
  return out


__all__ = ["Target", "VARIANTS", "apply", "factors", "find_target", "fold_into", "init_v0", "mean_factors",
           "template"]
