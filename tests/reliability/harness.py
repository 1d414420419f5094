"""Shared pieces of the reliability tests: the tiny run they all use, run in a subprocess.

Every run is the same 12-step tiny demo config (checkpoints at steps 4, 8, 12, no time-based saves), so the
compiled train step comes from JAX's persistent cache after the first run.
"""
import fcntl
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_runner.py")
STEPS = 12
CONFIG = ["--config", "configs/demo.py:tiny=true", f"--config.total_steps={STEPS}",
          "--config.checkpoint_every_steps=4", "--config.log_every_steps=1", "--config.checkpoint_every_secs=0",
          "--config.evals.zeroshot.tasks=demo:colour"]  # one eval task: these tests are about the checkpoints
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def command(workdir, *extra, fault=False):
  entry = [RUNNER] if fault else ["-m", "hyperclip_jax.train"]
  return [sys.executable, *entry, "--workdir", str(workdir), *CONFIG, *extra]


def run(workdir, *extra, fault=None, timeout=600):
  """Runs the trainer to its end (or death); returns the CompletedProcess (text output)."""
  env = {**ENV, "HYPERCLIP_FAULT": fault} if fault else ENV
  return subprocess.run(command(workdir, *extra, fault=bool(fault)), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def popen(workdir, *extra, fault=None):
  env = {**ENV, "HYPERCLIP_FAULT": fault} if fault else ENV
  return subprocess.Popen(command(workdir, *extra, fault=bool(fault)), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def complete_steps(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


def partial_dirs(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(d for d in os.listdir(ckpts) if "tmp" in d) if os.path.isdir(ckpts) else []


def last_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return json.loads(f.readlines()[-1])


def error_line(stderr):
  """The trainer's own message (absl/jax warnings come on other lines)."""
  lines = [l for l in stderr.splitlines() if l.startswith("hyperclip-train:")]
  assert len(lines) == 1, stderr[-2000:]
  return lines[0]


def shared_once(tmp_path_factory, name, make):
  """make(folder) -> JSON-able result, run once per pytest run even across xdist workers (the others wait)."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps share this run's parent directory
    shared = shared.parent
  folder, result = shared / name, shared / f"{name}.json"
  with open(shared / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not result.exists():
      result.write_text(json.dumps(make(folder)))
  return json.loads(result.read_text())
