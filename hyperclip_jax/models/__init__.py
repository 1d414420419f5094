"""Model registry: image encoders by timm name (the two-tower model, two_towers.build_model, builds on it)."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from hyperclip_jax.models import efficientnet, mobilenetv3, vit

# name -> factory(**overrides) -> flax module; each family file owns its table.
_IMAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    **efficientnet.MODELS, **mobilenetv3.MODELS, **vit.MODELS}


def image_encoder_names() -> list[str]:
  return sorted(_IMAGE_ENCODERS)


def build_image_encoder(name: str, **overrides: Any) -> nn.Module:
  """Builds an image encoder by its timm name, e.g. build_image_encoder('efficientnet_b0', width_mult=0.25).

  The module maps images [B, H, W, 3] (or grouped [G, S, H, W, 3]) to pooled pre-logits features [B, C]
  (or [G, S, C]); an optional `generated` variable collection modulates its norm layers.
  """
  if name not in _IMAGE_ENCODERS:
    raise ValueError(f"image encoder {name!r} is unknown; known: {', '.join(image_encoder_names())}")
  return _IMAGE_ENCODERS[name](**overrides)
