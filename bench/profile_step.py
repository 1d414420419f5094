"""Where the train step's time goes: a jax.profiler trace of a few steps, summed per XLA op kind.

  .venv/bin/python bench/profile_step.py --encoder efficientnet_b0 --size 224 --batch 32 [--variant siglip]
      [--steps 3] [--top 15] [--trace-dir DIR]

Builds the same step as bench/vs_open_clip.py (its `make_config`: the demo config at full encoder width and depth,
demo text tower) with bench/train_step.py's setup, compiles and warms it up, then traces `--steps` steps with
`jax.profiler.trace(..., create_perfetto_trace=True)` and reads the Perfetto JSON it writes. Every complete event
whose name is an XLA op of the compiled step (a fusion, dot, convolution, copy, ...) is summed; op kinds are the
names without their numeric suffix (`multiply_add_fusion.763` -> `multiply_add_fusion`). On the CPU backend ops of
one step may run concurrently on the thread pool, so the op-time total can exceed the wall time. One JSON line per
figure.
XLA's fusion names say what a fusion ends in, not all it contains: read `ynn_fusion` as YNNPACK calls (dots and
the native convolutions), `*_add_fusion` / `multiply_*` as elementwise passes (the shift-add depthwise form,
BatchNorm), `reduce*` as reductions (BatchNorm statistics, bias and kernel gradients).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import figures  # bench/ is the script's directory, so on sys.path
import jax
import train_step
import vs_open_clip

# Events of the runtime and of Python, not XLA ops of the step.
_NOT_OPS = re.compile(r"^(\$|ThunkExecutor|SlinkyThreadPool|PjitFunction|Thunk|TfrtCpu|PjRt|XlaModule|"
                      r"ExecuteHelper|.*::)")


def op_kind(name: str) -> str:
  """`multiply_add_fusion.763` -> `multiply_add_fusion`; `dot.244` -> `dot`."""
  return re.sub(r"\.\d+$", "", name)


def summarize(trace_events: list[dict]) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
  """(microseconds per op, per op kind, calls per op) over the complete ('X') events that are XLA ops."""
  per_op, per_kind, calls = collections.Counter(), collections.Counter(), collections.Counter()
  for e in trace_events:
    if e.get("ph") != "X" or _NOT_OPS.match(e.get("name", "")):
      continue
    per_op[e["name"]] += e.get("dur", 0)
    per_kind[op_kind(e["name"])] += e.get("dur", 0)
    calls[e["name"]] += 1
  return per_op, per_kind, calls


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--encoder", default="efficientnet_b0")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--variant", default="siglip", choices=("siglip", "hyperclip", "token"))
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary directory)")
  args = p.parse_args(argv)
  if args.steps < 1:
    raise SystemExit(f"--steps={args.steps} must be >= 1")
  base = dict(encoder=args.encoder, image_size=args.size, batch=args.batch, variant=args.variant)

  def emit(name: str, value: float, unit: str, **extra) -> None:
    figures.emit(name, value, unit, **base, **extra)

  config = vs_open_clip.make_config(args.encoder, args.size, args.batch, args.variant)
  _, _, rng, state, step, _, batch = train_step._setup(config, args.variant)  # bench/train_step.py's step
  state, metrics = step(state, batch, rng)  # compile + warm-up
  jax.block_until_ready(metrics)

  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    wall = (time.perf_counter() - t0) / args.steps
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise SystemExit(f"no Perfetto trace (*.trace.json.gz) under {trace_dir}: the profiler wrote nothing")
  with gzip.open(files[-1], "rt", encoding="utf-8") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op, per_kind, calls = summarize(events)
  total = sum(per_kind.values())
  if not total:
    raise SystemExit(f"{files[-1]} holds no XLA op events; this backend's profiler may not record them")
  emit("step_wall_ms", round(1e3 * wall, 2), "ms", steps=args.steps)
  emit("op_time_per_step_ms", round(total / 1e3 / args.steps, 2), "ms",
       note="summed over ops; ops may overlap on the thread pool")
  for kind, us in per_kind.most_common(args.top):
    emit("op_kind_share", round(us / total, 4), "fraction", kind=kind,
         ms_per_step=round(us / 1e3 / args.steps, 2), ops=sum(1 for o in per_op if op_kind(o) == kind))
  for op, us in per_op.most_common(args.top):
    emit("op_share", round(us / total, 4), "fraction", op=op, ms_per_step=round(us / 1e3 / args.steps, 2),
         calls_per_step=calls[op] / args.steps)
  emit("trace_file", 0, "path", path=files[-1])


if __name__ == "__main__":
  main(sys.argv[1:])
