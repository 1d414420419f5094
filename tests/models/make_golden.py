"""Writes the timm reference outputs that tests/models/test_timm_parity.py checks our encoders against.

Run by `make golden`, inside .venv-golden (torch + timm; the main venv has neither):
  .venv-golden/bin/python tests/models/make_golden.py [--only efficientnet_b0,...] [--out tests/models/golden]

For each (encoder, size) below: timm's `create_model(name, pretrained=False)` in eval mode, every
state-dict entry replaced by tests/models/golden_weights.py's deterministic value, then
`forward_head(forward_features(x), pre_logits=True)` on the golden images (batch 2). The reference is
computed in float64 (so the test measures our float32 error, not timm's); timm's own float32 deviation from
it is stored too. Each file holds the state-dict layout (names, shapes, dtypes), the features [2, C], the
parameter count without the classifier and the versions; no weights and no images (both regenerated).
Prints one JSON line per file.

ViTs run at 64 px with `dynamic_img_size=True`: the parameters stay the 224-px ones (pos_embed [1, 197, D])
and timm resamples the 14x14 position grid to the input's grid on every call with
`resample_abs_pos_embed` (torch bicubic, antialias=True; the class token's entry is kept as is). The JAX
ViT must resample the same way (jax.image.resize(..., 'bicubic', antialias=True) matches torch's
antialiased bicubic: both use the a = -0.5 cubic kernel). vit_tiny also runs at 224 (no resampling).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import golden_weights  # beside this script, so on sys.path when it runs
import numpy as np
import timm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

BATCH = 2
CNN_SIZE = 64  # every CNN here downsamples 32x: a 2x2 final map
VIT_SIZE = 64  # 4x4 patch grid, pos_embed resampled from 14x14
# (timm name, image size): the 14 encoders at the reduced size, plus the two unreduced paths.
CASES: tuple[tuple[str, int], ...] = (
    *((n, CNN_SIZE) for n in (
        "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
        "tinynet_a", "tinynet_b", "tinynet_c", "tinynet_d", "tinynet_e",
        "mobilenetv3_small_100", "mobilenetv3_large_100")),
    *((n, VIT_SIZE) for n in ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")),
    ("efficientnet_b0", 224),
    ("vit_tiny_patch16_224", 224),
)


def _create(name: str) -> torch.nn.Module:
  kwargs = {"dynamic_img_size": True} if name.startswith("vit_") else {}
  model = timm.create_model(name, pretrained=False, **kwargs)
  return model.eval()


def _entries(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
  return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def _features(model: torch.nn.Module, images_nchw: np.ndarray, dtype: torch.dtype) -> np.ndarray:
  model = model.to(dtype)
  with torch.no_grad():
    x = torch.from_numpy(images_nchw).to(dtype)
    return model.forward_head(model.forward_features(x), pre_logits=True).double().numpy()


def make_one(name: str, size: int, out_dir: str) -> dict:
  """Runs one case and writes <out_dir>/<name>_<size>.npz; returns its summary."""
  model = _create(name)
  entries = _entries(model)
  state = golden_weights.golden_state_dict(entries)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

  classifier = model.pretrained_cfg["classifier"]
  param_count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(classifier + "."))
  images = golden_weights.to_nchw(golden_weights.golden_images(size, BATCH))
  f32 = _features(model, images, torch.float32)
  f64 = _features(model, images, torch.float64)  # the reference
  if not np.all(np.isfinite(f64)):
    raise RuntimeError(f"{name}@{size}: non-finite features; the golden weight scales need a look")

  path = os.path.join(out_dir, f"{name}_{size}.npz")
  np.savez_compressed(
      path,
      model=np.array(name),
      size=np.array(size),
      batch=np.array(BATCH),
      recipe=np.array(golden_weights.RECIPE),
      image_seed=np.array(golden_weights.IMAGE_SEED),
      entries=np.array(json.dumps(entries)),
      features=f64.astype(np.float32),  # [B, C]
      timm_f32_max_abs_err=np.array(float(np.abs(f32 - f64).max())),
      param_count=np.array(param_count, np.int64),
      default_size=np.array(model.pretrained_cfg["input_size"][-1]),
      timm_version=np.array(timm.__version__),
      torch_version=np.array(torch.__version__),
  )
  return {
      "file": os.path.relpath(path, ROOT), "bytes": os.path.getsize(path), "features": list(f64.shape),
      "max_abs": float(np.abs(f64).max()), "std": float(f64.std()),
      "timm_f32_max_abs_err": float(np.abs(f32 - f64).max()), "param_count": param_count,
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated timm names (default: all)")
  parser.add_argument("--out", default=os.path.join(ROOT, "tests/models/golden"))
  args = parser.parse_args(argv)
  only = {n for n in args.only.split(",") if n}
  known = {n for n, _ in CASES}
  if only - known:
    raise SystemExit(f"--only names {sorted(only - known)} are unknown; known: {', '.join(sorted(known))}")
  os.makedirs(args.out, exist_ok=True)
  torch.manual_seed(0)
  for name, size in CASES:
    if only and name not in only:
      continue
    print(json.dumps({"model": name, "size": size, **make_one(name, size, args.out)}), flush=True)


if __name__ == "__main__":
  sys.exit(main())
