"""The export-time parity check every non-jax format of `hyperclip-export` passes (ONNX, TFLite, timm).

A converted classifier is run on CHECK_IMAGES fixed uint8 images (random pixels, the first all 0, the last all
255) and its logits are compared with the jax artifact's. It passes when the largest absolute difference is
within 1e-4 * max|jax logits| + 1e-4; otherwise the export is refused (no file of that format is kept).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

CHECK_IMAGES = 8
HINT = "use the StableHLO artifact and report this model"


def check_images(input_size: int, num: int = CHECK_IMAGES) -> np.ndarray:
  """The fixed check images, [num, input_size, input_size, 3] uint8."""
  images = np.random.default_rng(0).integers(0, 256, (num, input_size, input_size, 3), dtype=np.uint8)
  images[0], images[-1] = 0, 255
  return images


def tolerance(want: np.ndarray) -> float:
  return float(1e-4 * np.max(np.abs(want)) + 1e-4)


def compare(what: str, got: np.ndarray, want: np.ndarray, error: type[Exception],
            one: np.ndarray | None = None, **entry: Any) -> dict[str, Any]:
  """The manifest's check entry of `what` (e.g. "classifier.onnx"): `got` against the jax artifact's `want`, and
  `one` (the second image run alone: a dynamic batch dimension must not change it) against want[1:2]. `entry`
  (versions, interpreter) leads the result. Raises `error` on a shape mismatch or past the tolerance."""
  got, want = np.asarray(got), np.asarray(want)
  if got.shape != want.shape:
    raise error(f"{what} gave logits {list(got.shape)}, the jax artifact {list(want.shape)}")
  if one is not None and np.shape(one) != want[1:2].shape:
    raise error(f"{what} gave logits {list(np.shape(one))} for one image, the jax artifact {list(want[1:2].shape)}")
  diff = float(np.max(np.abs(got - want)))
  if one is not None:
    diff = max(diff, float(np.max(np.abs(np.asarray(one) - want[1:2]))))
  tol = tolerance(want)
  if not diff <= tol:
    raise error(f"{what} differs from the jax artifact by {diff:.3g} (tolerance {tol:.3g}); {HINT}")
  return {**entry, "images": int(len(want)), "max_abs_diff": diff, "tolerance": tol,
          "top1_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1))),
          "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
