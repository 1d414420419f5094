"""Disk full while a checkpoint is written: a one-line error naming the step and the cause, the previous
checkpoint intact. The checkpoints live on a 3 MiB tmpfs (room for one) in a private mount namespace
(`unshare -m`, needs CAP_SYS_ADMIN); where that is not allowed, RLIMIT_FSIZE makes big writes fail (EFBIG)."""
import asyncio
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import types

from harness import ENV, ROOT, command, error_line


def _tmpfs_allowed():
  with tempfile.TemporaryDirectory() as d:
    probe = f"mount -t tmpfs -o size=1m tmpfs {d} && umount {d}"
    try:
      return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0
    except FileNotFoundError:
      return False


def _contents(folder):
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), folder)] = fh.read()
  return out


def _limit_file_size():
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write then fails with EFBIG instead of killing
  resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(reference, tmp_path):
  src = reference[0]
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir, ignore=shutil.ignore_patterns("metrics.jsonl", "final_eval.json", "tensorboard",
                                                              "checkpoints"))
  stash = tmp_path / "step4"
  shutil.copytree(os.path.join(src, "checkpoints", "4"), stash)  # resume from 4: the save of step 8 must fail
  ckpts, seen = workdir / "checkpoints", tmp_path / "seen"
  os.makedirs(ckpts)
  train_cmd = " ".join(map(shlex.quote, command(workdir)))
  if _tmpfs_allowed():
    script = (f"mount -t tmpfs -o size=3m tmpfs {ckpts} && cp -a {stash} {ckpts}/4 && {train_cmd}; rc=$?; "
              f"cp -a {ckpts} {seen}; exit $rc")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    cause = "No space left on device"
  else:
    shutil.copytree(stash, ckpts / "4")
    proc = subprocess.run(command(workdir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit_file_size)
    shutil.copytree(ckpts, seen)
    cause = ""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Event loop is closed" not in proc.stderr, "late tensorstore callbacks reached stderr"
  line = error_line(proc.stderr)
  assert "writing checkpoint step 8 to " in line and cause in line, line
  assert "step 4 is intact" in line and "rerun the same command to resume" in line
  assert sorted(int(d) for d in os.listdir(seen) if d.isdigit()) == [4]
  assert _contents(seen / "4") == _contents(stash), "step 4 changed"


def _unraisable(e):
  return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, err_msg=None,
                               object=None)


def test_late_write_callbacks_on_a_closed_loop_are_dropped_and_other_reports_kept(monkeypatch):
  from hyperclip_jax import checkpoint
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint._quiet_late_write_callbacks()
  checkpoint._quiet_late_write_callbacks()  # idempotent: one filter, not a chain of them
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)  # what a write finishing after a failed save does
  except RuntimeError as e:
    late = e
  other = RuntimeError("Event loop is closed")  # same text, raised elsewhere: not the late callback
  try:
    raise ValueError("a real problem")
  except ValueError as e:
    real = e
  for report in (late, other, real):
    sys.unraisablehook(_unraisable(report))
  assert [r.exc_value for r in seen] == [other, real]
