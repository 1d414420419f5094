"""Truncated or garbled checkpoints: resume falls back to the newest usable step, loudly; with none left it
stops unless --config.resume=fresh; restoring never unpickles."""
import os
import pickle
import shutil

from harness import CONFIG, ROOT, complete_steps, error_line, last_metrics, run

from hyperclip_jax import train


def _copy_run(src, dst):
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics.jsonl", "final_eval.json", "tensorboard"))
  return str(dst)


def _largest_array_file(workdir, step):
  """The largest OCDBT data file of a step's state: array bytes only, never _METADATA/_sharding JSON (those can
  outgrow the tiny arrays, and garbling them is a different failure than silent array corruption)."""
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs
           if os.path.basename(d) == "d" and os.path.basename(os.path.dirname(d)).startswith("ocdbt.process_")]
  assert files, f"no OCDBT data files under {state}"
  return max(files, key=os.path.getsize)


def _garble(path):
  """Flips bits in the middle of a file: the arrays still decode, to wrong values."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
    f.seek(0)
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_falls_back_with_a_warning(reference, tmp_path):
  workdir = _copy_run(reference[0], tmp_path / "run")
  _garble(_largest_array_file(workdir, 12))  # silent corruption: only the saved fingerprint catches it
  _truncate(os.path.join(workdir, "checkpoints", "8", "state", "manifest.ocdbt"))
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warning = next(l for l in proc.stderr.splitlines() if l.startswith("WARNING: checkpoint"))
  # Flipped bytes usually decode to wrong values (caught by the fingerprint); where they land on a chunk's
  # framing in the OCDBT file (its layout varies between runs), the read itself fails. Both must be caught.
  assert ("step 12 (array contents differ from the fingerprint" in warning
          or "step 12 (restore failed: " in warning) and ", step 8 (" in warning, warning
  assert "resuming from step 4 instead" in warning
  assert "resumed from step 4" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_damaged"))) == ["12", "8"]
  assert last_metrics(workdir)["params_checksum"] == reference[1]


def test_no_usable_checkpoint_stops_unless_resume_fresh(reference, tmp_path, capfd, monkeypatch):
  workdir = _copy_run(reference[0], tmp_path / "run")
  for step in (4, 8, 12):
    _garble(_largest_array_file(workdir, step))
  monkeypatch.chdir(ROOT)

  def no_unpickling(*args, **kwargs):
    raise AssertionError("a checkpoint restore tried to unpickle")
  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, no_unpickling)
  argv = ["--workdir", workdir, *CONFIG]
  assert train.main(argv) == 2
  line = error_line(capfd.readouterr().err)
  assert f"no usable checkpoint in {workdir}/checkpoints (step 12: " in line and "step 4: " in line
  assert "--config.resume=fresh" in line
  assert complete_steps(workdir) == [4, 8, 12]  # nothing moved or deleted

  assert train.main(argv + ["--config.resume=fresh"]) == 0
  assert "config.resume=fresh: starting from step 0" in capfd.readouterr().err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_previous"))) == ["12", "4", "8"]
  assert last_metrics(workdir)["params_checksum"] == reference[1]


def test_arrays_that_disagree_with_their_saved_fingerprint_are_damaged(reference, tmp_path):
  """The fingerprint detector alone, deterministically: step 12's arrays read fine but no longer match the
  fingerprint saved with them (here the saved value is changed, as if the arrays had decoded to other values)."""
  import json
  workdir = _copy_run(reference[0], tmp_path / "run")
  meta = os.path.join(workdir, "checkpoints", "12", "meta", "metadata")
  with open(meta, encoding="utf-8") as f:
    saved = json.load(f)
  saved["_run"]["fingerprint"] = "0" * len(saved["_run"]["fingerprint"])
  with open(meta, "w", encoding="utf-8") as f:
    json.dump(saved, f)
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warning = next(l for l in proc.stderr.splitlines() if l.startswith("WARNING: checkpoint"))
  assert "step 12 (array contents differ from the fingerprint" in warning, warning
  assert "resumed from step 8" in proc.stderr
  assert last_metrics(workdir)["params_checksum"] == reference[1]
