"""`hyperclip-data`: look at the data. `hyperclip-data demo --out DIR --n 16` writes the first n training
samples of the demo stream as PNGs plus captions.txt; `--task NAME` writes a zero-shot task's eval images
with their class names instead."""
import argparse
import pathlib
import sys
from typing import Sequence

from PIL import Image

from hyperclip_jax.data.sources.demo import DemoSource, demo_tasks


def _write_demo(args: argparse.Namespace) -> None:
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  lines = []
  if args.task:
    tasks = demo_tasks(args.size, n_eval=args.n, seed=args.seed)
    if args.task not in tasks:
      raise SystemExit(f"hyperclip-data: --task {args.task!r} is unknown; known: {', '.join(tasks)}")
    task = tasks[args.task]
    for i in range(args.n):
      image, label = task.sample_fn(i)
      Image.fromarray(image).save(out / f"{i:05d}.png")
      lines.append(f"{i:05d}.png\t{task.class_names[label]}")
  else:
    source = DemoSource(args.size, args.seed, two_objects_prob=args.two_objects_prob)
    for i in range(args.start, args.start + args.n):
      example = source[i]
      Image.fromarray(example["image"]).save(out / f"{i:05d}.png")
      lines.append(f"{i:05d}.png\t{example['caption']}")
  (out / "captions.txt").write_text("\n".join(lines) + "\n")
  print(f"wrote {len(lines)} images and captions.txt to {out}")


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of the `hyperclip-data` console script."""
  parser = argparse.ArgumentParser(prog="hyperclip-data", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="write demo samples as PNG files + captions.txt")
  demo.add_argument("--out", required=True, help="output directory (created if missing)")
  demo.add_argument("--n", type=int, default=16, help="number of samples")
  demo.add_argument("--start", type=int, default=0, help="first stream index (training stream only)")
  demo.add_argument("--size", type=int, default=64, help="image size in pixels")
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--two-objects-prob", type=float, default=0.3)
  demo.add_argument("--task", default="", help="write a zero-shot task's eval set instead, e.g. colour")
  args = parser.parse_args(argv)
  if args.n < 1:
    parser.error("--n must be >= 1")
  try:
    _write_demo(args)
  except ValueError as e:
    raise SystemExit(f"hyperclip-data: {e}") from None


if __name__ == "__main__":
  main(sys.argv[1:])
