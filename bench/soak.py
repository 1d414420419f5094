"""Soak: the tiny demo trainer killed at random moments (kill -9 or SIGTERM) and restarted, for a bounded time.

  python bench/soak.py --minutes 10 [--steps 300] [--seed 0] [--workdir runs/soak]

Each attempt runs `hyperclip-train` on one workdir and is killed after a random delay; once the time is up, a
last attempt runs to the end. The final params_checksum (last line of metrics.jsonl) must equal that of an
uninterrupted run of the same config, and the data positions of the steps that made it into the final state
(logged every step: data/index_min..index_max) must cover the stream exactly once. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir: str, steps: int, checkpoint_every: int) -> list[str]:
  return [sys.executable, "-m", "hyperclip_jax.train", "--config", "configs/demo.py:tiny=true", "--workdir", workdir,
          f"--config.total_steps={steps}", f"--config.checkpoint_every_steps={checkpoint_every}",
          "--config.log_every_steps=1", "--config.checkpoint_every_secs=0"]


def _env() -> dict[str, str]:
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  return env


def _complete(workdir: str) -> set[tuple[int, int]]:
  """(step, inode) of every finished checkpoint directory now present."""
  ckpts = os.path.join(workdir, "checkpoints")
  try:
    return {(int(d), os.stat(os.path.join(ckpts, d)).st_ino) for d in os.listdir(ckpts) if d.isdigit()}
  except FileNotFoundError:
    return set()


def _checksum(workdir: str) -> str:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return json.loads(f.readlines()[-1]).get("params_checksum", "")


def data_accounting(workdir: str, steps: int, batch: int) -> dict[str, int]:
  """Splits metrics.jsonl into the segments of successive attempts; a resumed attempt overrides the steps
  that the killed one had trained past its last checkpoint. Counts what the final lineage saw."""
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in rows if "data/index_min" in r]
  lineage: dict[int, tuple[int, int]] = {}
  redone, previous = 0, 0
  for r in rows:
    s = r["step"]
    if s <= previous:  # a new attempt resumed at s - 1: what the killed one did after that is discarded
      dropped = [k for k in lineage if k >= s]
      redone += len(dropped)
      for k in dropped:
        del lineage[k]
    lineage[s] = (r["data/index_min"], r["data/index_max"])
    previous = s
  seen = sorted(p for lo, hi in lineage.values() for p in range(lo, hi + 1))
  expected = steps * batch
  return {"steps_in_final_lineage": len(lineage), "steps_redone": redone, "samples_seen": len(seen),
          "samples_expected": expected, "samples_repeated": len(seen) - len(set(seen)),
          "samples_lost": len(set(range(expected)) - set(seen))}


def soak(workdir: str, minutes: float, steps: int, checkpoint_every: int, seed: int, reference: str | None = None,
         max_kills: int | None = None, delay: tuple[float, float] = (2.0, 40.0), kinds: list[str] | None = None,
         log=print) -> dict:
  """Runs the soak in `workdir` (emptied first); returns the report (report['ok'] says whether it passed).

  reference: the params_checksum of an uninterrupted run of the same config (else one is run first);
  kinds: the signals to send in turn (default: SIGKILL or SIGTERM at random).
  """
  rng = random.Random(seed)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  env, t0 = _env(), time.monotonic()
  if reference is None:
    ref_dir = os.path.join(workdir, "reference")
    subprocess.run(_command(ref_dir, steps, checkpoint_every), cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = _checksum(ref_dir)
    log(f"reference run: {time.monotonic() - t0:.0f}s, params_checksum {reference}")
  run_dir = os.path.join(workdir, "run")
  kills = {"SIGKILL": 0, "SIGTERM": 0}
  checkpoints, attempts, unexpected = set(), 0, []
  deadline = time.monotonic() + minutes * 60
  finished = False
  while not finished:
    killing = time.monotonic() < deadline and (max_kills is None or sum(kills.values()) < max_kills)
    attempts += 1
    with open(os.path.join(workdir, f"attempt{attempts}.log"), "w") as log_file:
      proc = subprocess.Popen(_command(run_dir, steps, checkpoint_every), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=log_file)
      when = time.monotonic() + rng.uniform(*delay)
      kind = (signal.Signals[kinds[(attempts - 1) % len(kinds)]] if kinds
              else rng.choice([signal.SIGKILL, signal.SIGTERM]))
      while proc.poll() is None and not (killing and time.monotonic() >= when):
        checkpoints |= _complete(run_dir)
        time.sleep(0.1)
      if proc.poll() is None:
        proc.send_signal(kind)
        rc = proc.wait()
        # rc 0: the run completed between the poll and the signal (the kill landed on a finished process)
        expected = (-signal.SIGKILL, 0) if kind == signal.SIGKILL else (75, 0, -signal.SIGTERM)
        finished = rc == 0
        kills[kind.name] += 1
        log(f"attempt {attempts}: {kind.name} at {time.monotonic() - t0:.0f}s, rc {rc}, complete checkpoints "
            f"{sorted(s for s, _ in _complete(run_dir))}")
        if rc not in expected:
          unexpected.append(f"attempt {attempts}: {kind.name} gave rc {rc}")
      else:
        rc = proc.returncode
        finished = rc == 0
        if rc != 0:
          unexpected.append(f"attempt {attempts}: exited by itself with rc {rc}")
          if not killing:
            break
      checkpoints |= _complete(run_dir)
  final = _checksum(run_dir) if finished else ""
  accounting = data_accounting(run_dir, steps, batch=32) if finished else {}
  ok = (finished and final == reference and not unexpected and accounting["samples_lost"] == 0
        and accounting["samples_repeated"] == 0 and accounting["samples_seen"] == accounting["samples_expected"])
  return {"ok": ok, "minutes": round((time.monotonic() - t0) / 60, 2), "steps": steps, "attempts": attempts,
          "kills_survived": kills, "checkpoints_written": len(checkpoints), "final_checksum": final,
          "reference_checksum": reference, **accounting, "unexpected": unexpected}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep killing (then one clean run)")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--checkpoint-every", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "soak"))
  args = parser.parse_args()
  report = soak(args.workdir, args.minutes, args.steps, args.checkpoint_every, args.seed,
                log=lambda m: print(m, file=sys.stderr, flush=True))
  print(json.dumps(report, sort_keys=True))
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
