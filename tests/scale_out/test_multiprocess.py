"""Two processes x 2 CPU devices (jax.distributed, gloo) train to the same params as one 4-device process."""
import os
import subprocess

import jax
import scale_helpers as h

SCRIPT = os.path.join(h.ROOT, "launch", "local_multiprocess.sh")
STEPS = 3
OVERRIDES = {**h.FAST, "optim.schedule.warmup_steps": 0, "optim.eps": 1e-4, "total_steps": STEPS,
             "checkpoint_every_steps": STEPS, "checkpoint_every_secs": 0.0, "log_every_steps": 1}


def _launch(workdir, processes, devices, port):
  args = ["bash", SCRIPT, "--num-processes", str(processes), "--devices-per-process", str(devices),
          "--port", str(port), "--", "--config", f"{h.DEMO}:tiny=true", "--workdir", workdir,
          *h.cli_overrides(OVERRIDES)]
  return subprocess.Popen(args, cwd=h.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_train_like_one(tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  # One run at a time: gloo gives the processes 30 s to meet at their first collective, so they must not
  # be slowed unevenly (e.g. by a third process compiling beside them on a 2-core machine).
  for workdir, processes, devices, port in ((multi, 2, 2, 12391), (single, 1, 4, 12392)):
    proc = _launch(workdir, processes, devices, port)
    out, _ = proc.communicate(timeout=900)
    logs = "".join(open(os.path.join(workdir, "logs", f)).read()[-3000:]
                   for f in sorted(os.listdir(os.path.join(workdir, "logs"))))
    assert proc.returncode == 0, out + logs
  config = h.tiny_config(**{k: v for k, v in OVERRIDES.items() if k != "optim.schedule.warmup_steps"})
  mesh = h.mesh_of(1, 1, jax.devices()[:1])
  h.assert_trees_close(h.restore_params(config, multi, STEPS, mesh),
                       h.restore_params(config, single, STEPS, mesh), rtol=1e-4, atol=1e-5)
  assert "process_1.log" in os.listdir(os.path.join(multi, "logs"))
  with open(os.path.join(multi, "metrics.jsonl")) as f:  # written by process 0 only
    assert sum('"train/loss"' in line for line in f) == STEPS
