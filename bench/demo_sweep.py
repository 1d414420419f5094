"""Train several demo runs side by side and print their zero-shot accuracies: one JSON line per run and eval.

  .venv/bin/python bench/demo_sweep.py --out /tmp/sweep -j 2 \\
      "scale135=--config.data.object_scale=1.35" "siglip=configs/demo.py:variant=siglip"

Each positional argument is NAME=ARGS: ARGS are hyperclip-train arguments, the first one optionally a config
spec (default configs/demo.py), the rest `--config.a.b=v` overrides. Runs go to OUT/NAME (an existing run
resumes); `-j` runs that many at once (on a GPU host set XLA_PYTHON_CLIENT_MEM_FRACTION so they share the card;
the procedural renderer is CPU-bound, so a many-core host keeps several runs busy). `--timeout` stops a run and
reports its last evaluation. The docs/demo.md tables come from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def _last_evals(path: str) -> list[dict]:
  rows = []
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        if any(k.startswith("zeroshot/") for k in row):
          rows.append(row)
  except FileNotFoundError:
    pass
  return rows


def _perf(path: str) -> float | None:
  speed = None
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        speed = json.loads(line).get("perf/images_per_sec", speed)
  except FileNotFoundError:
    pass
  return speed


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="NAME=hyperclip-train args")
  p.add_argument("--out", required=True)
  p.add_argument("-j", "--jobs", type=int, default=1)
  p.add_argument("--timeout", type=float, default=0.0, help="seconds per run (0: none)")
  args = p.parse_args(argv)
  specs = []
  for r in args.runs:
    name, sep, rest = r.partition("=")
    if not sep or not name or "/" in name:
      raise SystemExit(f"demo_sweep: run {r!r} must be NAME=ARGS with a plain NAME (e.g. base=)")
    extra = shlex.split(rest)
    config = "configs/demo.py"
    if extra and not extra[0].startswith("--"):
      config = extra.pop(0)
    specs.append((name, config, extra))
  pending, running = list(specs), []
  while pending or running:
    while pending and len(running) < max(args.jobs, 1):
      name, config, extra = pending.pop(0)
      workdir = os.path.join(args.out, name)
      os.makedirs(workdir, exist_ok=True)
      cmd = [sys.executable, "-m", "hyperclip_jax.train", "--config", config, "--workdir", workdir, *extra]
      log = open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8")
      running.append((name, config, extra, workdir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                      time.time(), log))
    time.sleep(2.0)
    for entry in list(running):
      name, config, extra, workdir, proc, t0, log = entry
      timed_out = bool(args.timeout) and time.time() - t0 > args.timeout and proc.poll() is None
      if timed_out:
        proc.kill()
      if proc.poll() is None:
        continue
      running.remove(entry)
      log.close()
      metrics = os.path.join(workdir, "metrics.jsonl")
      for row in _last_evals(metrics):
        top1 = {k.split("/")[1]: round(v, 3) for k, v in row.items() if k.startswith("zeroshot/") and k.endswith("/top1")}
        print(json.dumps({"run": name, "step": row.get("step"), **top1}), flush=True)
      print(json.dumps({"run": name, "rc": proc.returncode, "timed_out": timed_out,
                        "images_per_sec": _perf(metrics), "wall_s": round(time.time() - t0, 1),
                        "command": " ".join(["hyperclip-train", "--config", config, *extra])}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
