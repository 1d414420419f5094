"""kill -9 in the middle of a run, rerun the same command: the run resumes and ends bit-identical."""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def _command(workdir):
  return [sys.executable, "-m", "hyperclip_jax.train", "--config", "configs/demo.py:tiny=true",
          "--workdir", workdir, f"--config.total_steps={STEPS}", "--config.checkpoint_every_steps=5",
          "--config.log_every_steps=5"]


def _checksum(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return json.loads(f.readlines()[-1])["params_checksum"]


def _finished_steps(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


def test_kill_9_then_rerun_is_bit_exact(tmp_path):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  straight = str(tmp_path / "straight")
  subprocess.run(_command(straight), cwd=ROOT, env=env, check=True, capture_output=True)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_command(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  while not _finished_steps(killed) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps = _finished_steps(killed)
  assert steps and steps[-1] < STEPS, f"the run was not stopped midway (checkpoints: {steps})"

  rerun = subprocess.run(_command(killed), cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  assert "resumed from step" in rerun.stderr  # the newest complete checkpoint, >= the one seen above
  assert _checksum(killed) == _checksum(straight)
