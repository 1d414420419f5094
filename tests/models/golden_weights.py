"""Deterministic stand-in weights and images for the timm parity goldens: pure numpy, no torch.

The golden files (tests/models/golden/*.npz) store only a model's state-dict layout and timm's output, never
weights or inputs: both are regenerated here from parameter names, shapes and fixed seeds, identically in
the torch venv that writes the goldens (tests/models/make_golden.py) and in the test venv that checks them
(tests/models/test_timm_parity.py). Import this file by path; it depends on numpy alone.

The draws use numpy's legacy `RandomState`, whose streams are frozen across numpy versions (NEP 19), so the
two venvs need not share a numpy release. Scales are chosen so activations stay O(1) through deep nets and
every BatchNorm has non-trivial running statistics (an eval-mode BN that ignored them would fail parity).
Bump RECIPE whenever a draw changes: the goldens record it and the test refuses stale files.
"""
from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np

RECIPE = 1  # version of the rules below; stored in each golden file
IMAGE_SEED = 0
IMAGE_RANGE = (-1.0, 1.0)  # the value_range the encoders are fed in training


def _rng(name: str) -> np.random.RandomState:
  return np.random.RandomState(zlib.crc32(f"golden/{RECIPE}/{name}".encode()))


def golden_tensor(name: str, shape: Sequence[int], dtype: str, is_batchnorm: bool) -> np.ndarray:
  """The golden value of one state-dict entry, from its name, shape and dtype.

  `is_batchnorm` says whether the entry's module has running statistics (BatchNorm) rather than being a
  LayerNorm, conv or linear layer; `golden_state_dict` derives it from the sibling keys.
  """
  shape = tuple(int(s) for s in shape)
  leaf = name.rsplit(".", 1)[-1]
  rng = _rng(name)
  if leaf == "num_batches_tracked" or not np.issubdtype(np.dtype(dtype), np.floating):
    return np.zeros(shape, dtype)  # an integer counter: unused in eval mode
  if leaf == "running_mean":
    v = rng.normal(0.0, 0.1, shape)
  elif leaf == "running_var":
    v = rng.uniform(0.5, 2.0, shape)
  elif leaf == "weight" and len(shape) == 1:  # BatchNorm or LayerNorm gain
    v = rng.uniform(0.5, 1.5, shape)
  elif leaf == "bias" and is_batchnorm:
    v = rng.normal(0.0, 0.1, shape)
  elif leaf == "bias":  # conv / linear / LayerNorm bias
    v = rng.normal(0.0, 0.05, shape)
  elif len(shape) >= 2 and leaf == "weight":  # conv [O, I/g, kh, kw] or linear [O, I]
    fan_in = int(np.prod(shape[1:]))
    v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
  else:  # cls_token, pos_embed, and any other free tensor
    v = rng.normal(0.0, 0.1, shape)
  return v.astype(dtype)


def golden_state_dict(entries: Iterable[tuple[str, Sequence[int], str]]) -> dict[str, np.ndarray]:
  """(name, shape, dtype) triples in timm's state-dict order -> {name: array}."""
  entries = list(entries)
  bn_modules = {n.rsplit(".", 1)[0] for n, _, _ in entries if n.endswith(".running_mean")}
  return {n: golden_tensor(n, s, d, n.rsplit(".", 1)[0] in bn_modules) for n, s, d in entries}


def golden_images(size: int, batch: int = 2, seed: int = IMAGE_SEED) -> np.ndarray:
  """Images [batch, size, size, 3] float32 (NHWC, for JAX): clipped normals in IMAGE_RANGE."""
  rng = np.random.RandomState(seed * 100003 + size)
  lo, hi = IMAGE_RANGE
  x = np.clip(rng.normal(0.0, 0.5, (batch, size, size, 3)), lo, hi)
  return x.astype(np.float32)


def to_nchw(images: np.ndarray) -> np.ndarray:
  """[B, H, W, C] -> [B, C, H, W] (the same images, laid out for torch)."""
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
