"""hyperclip-predict: classify image files with an exported classifier (hyperclip-export), top-k with scores.

  hyperclip-predict --model runs/demo/export_colour img1.jpg img2.png [--top-k 3] [--json]

Images are read with PIL, converted to RGB and resized to the classifier's input size (bilinear, the
manifest's resize(S)). An unreadable image is reported on stderr and skipped; the exit status is then 1.
Needs only jax, numpy and PIL: the model code is never imported.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np
from PIL import Image

from hyperclip_jax import export


def read_image(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3]; raises OSError/ValueError for a missing or undecodable file."""
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="hyperclip-predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="an exported classifier directory (hyperclip-export --out)")
  parser.add_argument("--top-k", type=int, default=5, help="classes to print per image")
  parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
  parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
  parser.add_argument("images", nargs="+", help="image files (any format PIL reads)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.top_k < 1 or args.batch_size < 1:
    parser.error("--top-k and --batch-size must be >= 1")
  try:
    clf = export.load_classifier(args.model)
  except (export.ExportError, OSError, ValueError) as e:
    print(f"hyperclip-predict: error: {e}", file=sys.stderr)
    return 2
  k = min(args.top_k, len(clf.classes))
  failed = 0
  for start in range(0, len(args.images), args.batch_size):
    paths, images = [], []
    for path in args.images[start:start + args.batch_size]:
      try:
        images.append(read_image(path, clf.input_size))
        paths.append(path)
      except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError) for undecodable files
        print(f"hyperclip-predict: cannot read {path}: {e}", file=sys.stderr)
        failed += 1
    if not images:
      continue
    scores = clf.scores(clf(np.stack(images)))  # [n, C]
    for path, row in zip(paths, scores):
      top = np.argsort(-row, kind="stable")[:k]
      if args.json:
        print(json.dumps({"image": path, "top": [{"class": clf.classes[i], "score": round(float(row[i]), 6)}
                                                 for i in top]}, ensure_ascii=False))
      else:
        print(f"{path}: " + ", ".join(f"{clf.classes[i]} {row[i]:.3f}" for i in top))
    sys.stdout.flush()
  if failed:
    print(f"hyperclip-predict: {failed} of {len(args.images)} image(s) could not be read", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
