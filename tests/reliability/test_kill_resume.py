"""kill -9 in the middle of a run (the `make demo` case, on the tiny config), rerun the same command: the run
resumes from its newest checkpoint and ends bit-identical to the uninterrupted reference run."""
import os
import signal
import subprocess
import time

from harness import ENV, ROOT, STEPS, command, complete_steps, last_metrics, run


def test_kill_9_then_rerun_is_bit_exact(reference, tmp_path):
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(command(killed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  while not complete_steps(killed) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps = complete_steps(killed)
  assert steps and steps[-1] < STEPS, f"the run was not stopped midway (checkpoints: {steps})"

  rerun = run(killed)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resumed from step {steps[-1]} (" in rerun.stderr  # the newest complete checkpoint the kill left
  assert last_metrics(killed)["params_checksum"] == reference[1]
