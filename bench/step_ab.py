"""Two or more builds of the train step in one process, timed interleaved: the A/B this machine needs.

  .venv/bin/python bench/step_ab.py --encoder efficientnet_b0 --size 224 --variants siglip,hyperclip
  .venv/bin/python bench/step_ab.py --size 224 --tap-block-bytes 1000000000000,3145728   # one variant, two budgets

Single runs on a shared 2-core machine spread by up to 30%; steps of the builds alternate here (order reversed
every other round), so slow phases hit every build alike. Each build is bench/vs_open_clip.py's config (the demo
config at full encoder width and depth) set up by bench/train_step.py. `--tap-block-bytes` sets
`layers.TAP_GRAD_BLOCK_BYTES` (read when the step is traced) per build. Prints one JSON line per build: the
median step time over `--rounds` steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (bench/ is not a package)
import vs_open_clip  # noqa: E402

from hyperclip_jax.models import layers  # noqa: E402


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--encoder", default="efficientnet_b0")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--variants", default="siglip", help="comma-separated: siglip, hyperclip, token")
  p.add_argument("--tap-block-bytes", default="", help="comma-separated TAP_GRAD_BLOCK_BYTES values (default: "
                 "the library's)")
  p.add_argument("--rounds", type=int, default=6)
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  budgets = [int(b) for b in args.tap_block_bytes.split(",") if b] or [layers.TAP_GRAD_BLOCK_BYTES]
  if args.rounds < 1 or not variants:
    raise SystemExit("step_ab: --rounds must be >= 1 and --variants must name at least one variant")
  command = "python bench/step_ab.py " + " ".join(argv)
  builds = []
  for variant in variants:
    for budget in budgets:
      layers.TAP_GRAD_BLOCK_BYTES = budget
      config = vs_open_clip.make_config(args.encoder, args.size, args.batch, variant)
      _, _, rng, state, step, _, batch = train_step._setup(config, variant)
      state, metrics = step(state, batch, rng)  # compile (traced with this budget) + warm-up
      jax.block_until_ready(metrics)
      builds.append({"variant": variant, "tap_block_bytes": budget, "step": step, "state": state, "rng": rng,
                     "batch": batch, "times": []})
  for r in range(args.rounds):
    for b in (builds if r % 2 == 0 else builds[::-1]):
      t0 = time.perf_counter()
      b["state"], metrics = b["step"](b["state"], b["batch"], b["rng"])
      jax.block_until_ready(metrics)
      b["times"].append(time.perf_counter() - t0)
  for b in builds:
    print(json.dumps(dict(name="train_step_ms", value=round(statistics.median(b["times"]) * 1e3, 1), unit="ms",
                          backend=jax.default_backend(), device=jax.devices()[0].device_kind, command=command,
                          encoder=args.encoder, image_size=args.size, batch=args.batch, variant=b["variant"],
                          tap_block_bytes=b["tap_block_bytes"], rounds=args.rounds,
                          all_ms=[round(t * 1e3) for t in b["times"]])), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
