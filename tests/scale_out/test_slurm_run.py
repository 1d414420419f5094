"""A simulated SLURM allocation: two processes with the environment srun gives one task per node on two nodes
of two GPUs each (here: 2 fake CPU devices per process). The trainer hands jax.distributed the settings the
launcher intends (all of the node's devices, not jax's [SLURM_LOCALID]), says so in its banner, and runs no
cross-process call per step outside the jitted step, while it still checkpoints collectively."""
import json
import os
import subprocess
import sys

import scale_helpers as h

STEPS, LOG_EVERY = 6, 3
OVERRIDES = {**h.FAST, "total_steps": STEPS, "log_every_steps": LOG_EVERY, "checkpoint_every_steps": 100,
             "checkpoint_every_secs": 0.001}  # a time-based save at every log step: agreed there, not per step
RUNNER = os.path.join(os.path.dirname(__file__), "spy_runner.py")


def _env(one_device_env, rank, port):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM",
                                                                   "JAX_PROCESS", "CUDA_VISIBLE"))}
  xla = one_device_env["XLA_FLAGS"].replace("device_count=1", "device_count=2")
  return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla, "PYTHONPATH": os.pathsep.join(sys.path),
          "SLURM_JOB_ID": "777", "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
          "SLURM_NODEID": str(rank), "SLURM_STEP_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "1(x2)",
          "SLURM_GPUS_ON_NODE": "2", "HYPERCLIP_COORDINATOR_PORT": str(port)}


def test_simulated_slurm_job_uses_every_device_and_syncs_only_at_log_steps(tmp_path, one_device_env):
  workdir = str(tmp_path / "run")
  args = [sys.executable, RUNNER, "--config", f"{h.DEMO}:tiny=true", "--workdir", workdir,
          *h.cli_overrides(OVERRIDES)]
  procs = [subprocess.Popen(args, cwd=h.ROOT, env=_env(one_device_env, rank, 12471), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for rank in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
  for rank, out in enumerate(outs):
    spy = json.load(open(os.path.join(workdir, f"spy_{rank}.json")))
    assert spy["initialize"] == {"coordinator_address": "localhost:12471", "num_processes": 2,
                                 "process_id": rank, "local_device_ids": [0, 1]}
    banner = next(l for l in out.splitlines() if l.startswith("topology:"))
    assert (f"process {rank}/2 | local devices 2 x cpu (cpu) | global devices 4 | mesh data=4 fsdp=1 | "
            f"coordinator_address=localhost:12471 | num_processes=2 | process_id={rank} | "
            "local_device_ids=[0, 1]") in banner
    # Outside checkpointing (collective by design), the loop itself makes one barrier after the compile and one
    # agreement per log step (the time-based checkpoint decision): 2 for 6 steps, none per step.
    loop = [(c["fn"], c["origin"]) for c in spy["calls"] if not c["in_checkpoint"] and c["origin"].startswith("train.py")]
    assert loop == [("barrier", "train.py:_train")] + [("broadcast_one_to_all", "train.py:_agree")] * 2
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [3, 6]  # the time-based saves, taken by both processes at the same steps
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if '"train/loss"' in l]
  assert [r["step"] for r in rows] == [3, 6]
