"""Images travel host -> device as uint8; the pixel affine of the pp spec's final `value_range` runs on device.

A float32 image is 4x the bytes of its uint8 pixels over PCIe and host links, at the rate a pod consumes
them. So the host pipeline keeps decode and augmentation and stops at uint8, and the trailing
`value_range(vmin, vmax, in_min, in_max, clip_values)` of the train spec moves into the jitted step.

  host_spec, affine = split_device_affine(spec)   # host side: run host_spec, ship uint8
  image = affine.apply(batch_image)               # device side, inside jit: float32 as the host computed it

The device computes (x - in_min) * scale + vmin in float32 in that order, as pp.value_range does on the host,
so the model sees the same values (tests/data/test_pixels.py checks all 256 levels). A spec whose
value_range is followed by another image op keeps it on the host (affine None: the batch is float32).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from hyperclip_jax.data import pp as pp_lib

# Ops that may follow the moved value_range: they do not touch the image's values.
_AFTER_OK = ("tokenize", "keep")


@dataclasses.dataclass(frozen=True)
class PixelAffine:
  """uint8 -> float32: (x - in_min) * (vmax - vmin) / (in_max - in_min) + vmin, optionally clipped first."""
  vmin: float = -1.0
  vmax: float = 1.0
  in_min: float = 0.0
  in_max: float = 255.0
  clip_values: bool = False

  @property
  def scale(self) -> np.float32:
    return np.float32((self.vmax - self.vmin) / (self.in_max - self.in_min))  # as pp.value_range rounds it

  def apply(self, image: jnp.ndarray) -> jnp.ndarray:
    """float32 [..., H, W, 3] from uint8 pixels (inside jit); float input passes through unchanged."""
    if jnp.issubdtype(image.dtype, jnp.floating):
      return image
    x = image.astype(jnp.float32)
    if self.clip_values:
      x = jnp.clip(x, np.float32(self.in_min), np.float32(self.in_max))
    if self.in_min:
      x = x - np.float32(self.in_min)
    return x * self.scale + np.float32(self.vmin)

  def apply_numpy(self, image: np.ndarray) -> np.ndarray:
    """The same on the host (numpy): for evaluation and tools that feed float32 images."""
    x = np.asarray(image, np.float32)
    if self.clip_values:
      x = np.clip(x, self.in_min, self.in_max)
    return (x - np.float32(self.in_min)) * self.scale + np.float32(self.vmin)


DEFAULT = PixelAffine()  # value_range(-1, 1): the models' input convention


def split_device_affine(spec: str) -> tuple[str, PixelAffine | None]:
  """(spec without its final image value_range, that op as a PixelAffine); (spec, None) where it cannot move:
  no value_range on 'image', or another image op after it."""
  parts = pp_lib.split_spec(spec)
  for i in range(len(parts) - 1, -1, -1):
    name, args, kwargs = pp_lib.parse_call(parts[i], pp_lib.OPS, "pp op")
    if name == "value_range":
      bound = dict(zip(("vmin", "vmax", "in_min", "in_max", "clip_values", "key"), args), **kwargs)
      if bound.pop("key", "image") != "image":
        continue
      pp_lib.value_range(**bound)  # the host op's own argument checks
      rest = parts[:i] + parts[i + 1:]
      return "|".join(rest), PixelAffine(**{k: (bool(v) if k == "clip_values" else float(v))
                                            for k, v in bound.items()})
    if name not in _AFTER_OK:
      return spec, None
  return spec, None
