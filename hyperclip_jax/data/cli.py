"""`hyperclip-data`: look at and prepare the data.

  hyperclip-data demo --out DIR --n 16          the first n demo training samples as PNGs + captions.txt
                                                (--task NAME: a zero-shot task's eval images instead)
  hyperclip-data stats 'shards/{00000..00099}.tar' [--json]
                                                good samples, skipped ones by reason, caption token lengths
  hyperclip-data filter 'shards/{00000..00099}.tar' --out DIR [--classes imagenet1k|FILE]
                                                keeps samples whose caption names a class: new shards +
                                                DIR/stats.json
"""
import argparse
import json
import os
import pathlib
import sys
from typing import Sequence

from PIL import Image

from hyperclip_jax.data import shard_tools
from hyperclip_jax.data.sources.demo import DemoSource, demo_tasks
from hyperclip_jax.evaluators import classnames  # the shipped lists (ImageNet-1k, CIFAR)


def _write_demo(args: argparse.Namespace) -> None:
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  lines = []
  if args.task:
    tasks = demo_tasks(args.size, n_eval=args.n, seed=args.seed, object_scale=args.object_scale)
    if args.task not in tasks:
      raise SystemExit(f"hyperclip-data: --task {args.task!r} is unknown; known: {', '.join(tasks)}")
    task = tasks[args.task]
    for i in range(args.n):
      image, label = task.sample_fn(i)
      Image.fromarray(image).save(out / f"{i:05d}.png")
      lines.append(f"{i:05d}.png\t{task.class_names[label]}")
  else:
    source = DemoSource(args.size, args.seed, two_objects_prob=args.two_objects_prob, object_scale=args.object_scale)
    for i in range(args.start, args.start + args.n):
      example = source[i]
      Image.fromarray(example["image"]).save(out / f"{i:05d}.png")
      lines.append(f"{i:05d}.png\t{example['caption']}")
  (out / "captions.txt").write_text("\n".join(lines) + "\n")
  print(f"wrote {len(lines)} images and captions.txt to {out}")


def _class_names(spec: str) -> list[str]:
  if spec in classnames.SHIPPED:
    spec = os.path.join(classnames._DATA, classnames.SHIPPED[spec][0])
  try:
    with open(spec, encoding="utf-8") as f:
      return [l.strip() for l in f if l.strip()]
  except OSError as e:
    known = ", ".join(classnames.SHIPPED)
    raise ValueError(f"--classes {spec!r} is neither a shipped list ({known}) nor a readable file ({e.strerror})")


def _stats(args: argparse.Namespace) -> None:
  out = shard_tools.stats(args.pattern, args.caption_key, args.tokenizer, args.max_len, args.workers)
  if args.json:
    print(json.dumps(out, sort_keys=True))
    return
  print(f"shards: {out['shards']}\ngood samples: {out['good']}")
  for reason, n in out["skipped"].items():
    if n:
      print(f"skipped ({reason}): {n}")
  t = out["caption_tokens"]
  print(f"caption tokens ({t['tokenizer']}): min {t['min']}, mean {t['mean']}, p50 {t['p50']}, p90 {t['p90']}, "
        f"p99 {t['p99']}, max {t['max']}; {t['over_max_len']} over max_len={t['max_len']}")


def _filter(args: argparse.Namespace) -> None:
  out = shard_tools.filter_shards(args.pattern, args.out, _class_names(args.classes), args.caption_key,
                                  args.samples_per_shard, args.workers)
  print(f"kept {out['kept']} of {out['good']} good samples ({out['classes_found']} classes named) in "
        f"{out['output_shards']} shard(s): {out['output_pattern'] or '(none)'}; stats: "
        f"{os.path.join(args.out, 'stats.json')}")


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
  demo.add_argument("--object-scale", type=float, default=1.0, help="object radii x this (config.data.object_scale)")
  demo.add_argument("--task", default="", help="write a zero-shot task's eval set instead, e.g. colour")
  workers = min(8, os.cpu_count() or 1)
  stats = sub.add_parser("stats", help="count good / skipped samples and caption lengths of webdataset shards")
  stats.add_argument("pattern", help="shard pattern, e.g. 'shards/{00000..00099}.tar' (quote the braces)")
  stats.add_argument("--json", action="store_true", help="print one JSON object")
  stats.add_argument("--caption-key", default="txt", help="'txt' or 'json:FIELD'")
  stats.add_argument("--tokenizer", default="bytes", help="tokenizer spec for caption lengths")
  stats.add_argument("--max-len", type=int, default=64, help="report captions longer than this many tokens")
  stats.add_argument("--workers", type=int, default=workers, help="processes (one shard each)")
  filt = sub.add_parser("filter", help="keep samples whose caption names a class; write new shards + stats.json")
  filt.add_argument("pattern", help="input shard pattern")
  filt.add_argument("--out", required=True, help="output directory")
  filt.add_argument("--classes", default="imagenet1k", help="a shipped class list (imagenet1k, cifar100, "
                    "cifar10) or a file with one class name per line")
  filt.add_argument("--caption-key", default="txt", help="'txt' or 'json:FIELD'")
  filt.add_argument("--samples-per-shard", type=int, default=10_000)
  filt.add_argument("--workers", type=int, default=workers, help="processes (one shard each)")
  args = parser.parse_args(argv)
  try:
    if args.command == "demo":
      if args.n < 1:
        parser.error("--n must be >= 1")
      _write_demo(args)
    elif args.command == "stats":
      _stats(args)
    else:
      _filter(args)
  except ValueError as e:
    raise SystemExit(f"hyperclip-data: {e}") from None


if __name__ == "__main__":
  main(sys.argv[1:])
