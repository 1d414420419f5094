"""Stand-ins for gcloud, the TPU workers and SLURM, so the launch scripts can run for real without a cluster.

fake_gcloud(tmp, workers): a `gcloud` that runs `tpu-vm ssh --command` scripts with bash in one home folder per
worker (tmp/worker_<i>) and, when a script returns, hangs up (SIGHUP) on its process group as a closing ssh
session may; it copies `tpu-vm scp` files out of the homes and answers `describe` from files the test writes.
Each worker home holds a checkout with a stand-in trainer (hyperclip_jax/train.py: prints its arguments and
environment, exits 75 on SIGTERM) and a `.venv/bin/python` that is this test's Python.
fake_slurm(tmp): `srun` (one stand-in task that exits 75 on SIGTERM, or FAKE_TASK_RC), `scancel` (signals the
task like `scancel --signal=TERM JOB` signals a job's steps) and `scontrol` (records its arguments).
Every call is appended to tmp/calls.log.
"""
import os
import pathlib
import stat
import sys

FAKE_TRAINER = '''\
import os, signal, sys, time
print("fake trainer", " ".join(sys.argv[1:]), flush=True)
print("env TFDS_DATA_DIR=" + os.environ.get("TFDS_DATA_DIR", ""), "XLA_FLAGS=" + os.environ.get("XLA_FLAGS", ""),
      "HYPERCLIP_COORDINATOR_PORT=" + os.environ.get("HYPERCLIP_COORDINATOR_PORT", ""), flush=True)

def on_term(signum, frame):
  print("SIGTERM: checkpoint saved", flush=True)
  sys.exit(75)

signal.signal(signal.SIGTERM, on_term)
for _ in range(1800):  # at most three minutes, whatever happens to the test
  time.sleep(0.1)
'''

GCLOUD = '''\
#!{python}
"""Fake gcloud (tests/scale_out/launch_fakes.py)."""
import os, pathlib, shutil, signal, subprocess, sys
fake = pathlib.Path({fake!r})
args = sys.argv[1:]
with open(fake / "calls.log", "a") as f:
  f.write("gcloud " + " ".join(args) + "\\n")
workers = int((fake / "workers").read_text())

def opt(name):
  for a in args:
    if a.startswith(name + "="):
      return a.split("=", 1)[1]
  return args[args.index(name) + 1] if name in args else None

if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
  states = (fake / "qr_states").read_text().split()
  print(states[0])
  if len(states) > 1:
    (fake / "qr_states").write_text(" ".join(states[1:]))
elif args[:4] == ["compute", "tpus", "queued-resources", "create"]:
  pass
elif args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
  fmt = opt("--format") or ""
  print(";".join(f"10.0.0.{{i}}" for i in range(workers)) if "networkEndpoints" in fmt else "READY HEALTHY v4-16")
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  which = opt("--worker")
  rc = 0
  for w in (range(workers) if which == "all" else [int(which)]):
    home = fake / f"worker_{{w}}"
    env = {{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}}
    env.update(HOME=str(home), FAKE_WORKER=str(w), PATH=str(fake / "worker_bin") + os.pathsep + env["PATH"])
    proc = subprocess.Popen(["bash", "-c", opt("--command")], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = proc.communicate(timeout=120)
    try:  # the ssh session ends: sshd hangs up on everything left in its process group
      os.killpg(proc.pid, signal.SIGHUP)
    except ProcessLookupError:
      pass
    proc.stdout, proc.stderr = out, err
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    rc = rc or proc.returncode
  sys.exit(rc)
elif args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  src, dst = args[4], args[5]
  shutil.copy(fake / f"worker_{{opt('--worker')}}" / src.split(":", 1)[1], dst)
else:
  sys.exit("fake gcloud: unexpected call " + " ".join(args))
'''

SRUN = '''\
#!/usr/bin/env bash
# Fake srun (tests/scale_out/launch_fakes.py): one task that exits 75 on SIGTERM, or FAKE_TASK_RC at once.
echo "srun $*" >> "{fake}/calls.log"
env > "{fake}/srun_env"
bash -c 'trap "echo task: SIGTERM; exit 75" TERM; echo $$ > "{fake}/task.pid"
  if [ -n "${{FAKE_TASK_RC:-}}" ]; then exit "$FAKE_TASK_RC"; fi
  for _ in $(seq 1800); do sleep 0.1; done; exit 99' &
wait $!
'''

SCANCEL = '''\
#!/usr/bin/env bash
echo "scancel $*" >> "{fake}/calls.log"
if [ "$1" = --signal=TERM ]; then kill -TERM "$(cat "{fake}/task.pid")"; fi
'''

SCONTROL = '''\
#!/usr/bin/env bash
echo "scontrol $*" >> "{fake}/calls.log"
'''


def _write_exe(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fake_gcloud(tmp: pathlib.Path, workers: int = 2) -> dict[str, str]:
  """Writes the fake gcloud and worker homes under tmp; returns the environment that puts them first on PATH."""
  (tmp / "workers").write_text(str(workers))
  (tmp / "qr_states").write_text("ACTIVE")
  _write_exe(tmp / "bin" / "gcloud", GCLOUD.format(python=sys.executable, fake=str(tmp)))
  _write_exe(tmp / "worker_bin" / "curl", '#!/usr/bin/env bash\necho "$FAKE_WORKER"\n')  # the metadata server
  for w in range(workers):
    checkout = tmp / f"worker_{w}" / "hyperclip_jax"
    (checkout / "hyperclip_jax").mkdir(parents=True)
    (checkout / "hyperclip_jax" / "__init__.py").write_text("")
    (checkout / "hyperclip_jax" / "train.py").write_text(FAKE_TRAINER)
    (checkout / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, checkout / ".venv" / "bin" / "python")
  return {"PATH": str(tmp / "bin") + os.pathsep + os.environ["PATH"]}


def fake_slurm(tmp: pathlib.Path) -> dict[str, str]:
  """Writes fake srun/scancel/scontrol under tmp/bin; returns the environment of a job inside an allocation."""
  for name, text in [("srun", SRUN), ("scancel", SCANCEL), ("scontrol", SCONTROL)]:
    _write_exe(tmp / "bin" / name, text.format(fake=str(tmp)))
  return {"PATH": str(tmp / "bin") + os.pathsep + os.environ["PATH"], "SLURM_JOB_ID": "4242",
          "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_CPUS_PER_TASK": "48", "SLURM_GPUS_PER_NODE": "h200:4",
          "SLURM_SUBMIT_DIR": str(tmp / "submit")}


def calls(tmp: pathlib.Path) -> list[str]:
  path = tmp / "calls.log"
  return path.read_text().splitlines() if path.exists() else []
