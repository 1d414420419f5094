"""timm -> Flax weight conversion: from_timm(name, state_dict) gives {'params', 'batch_stats'}.

The state dict is timm's full `model.state_dict()` as numpy arrays; classifier weights and
`num_batches_tracked` entries are ignored. Used to start from ImageNet-pretrained small encoders, and by the
tests as the proof that our architectures match timm's one to one.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# ---- shared helpers (owned by the EfficientNet change) ----------------------------------------------------


# ---- EfficientNet / TinyNet --------------------------------------------------------------------------------


# ---- MobileNetV3 -------------------------------------------------------------------------------------------


# ---- ViT ---------------------------------------------------------------------------------------------------


def from_timm(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a timm state dict of encoder `name` into Flax variables {'params': ..., 'batch_stats': ...}."""
  raise NotImplementedError(name)
