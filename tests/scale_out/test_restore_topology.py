"""A checkpoint written on a 2x4 mesh resumes on 8x1 and on 1 device and continues the same loss curve."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import scale_helpers as h

from hyperclip_jax import train

OVERRIDES = {**h.FAST, "total_steps": 4, "checkpoint_every_steps": 2, "checkpoint_every_secs": 0.0,
             "log_every_steps": 1, "optim.eps": 1e-4}


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _cut_after_step_2(src, dst):
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, "checkpoints", "4"))
  os.remove(os.path.join(dst, "metrics.jsonl"))


def test_checkpoint_resumes_on_other_meshes(tmp_path, one_device_env):
  ref = str(tmp_path / "ref_2x4")
  train.train(h.tiny_config(**OVERRIDES, **{"mesh.data": 2, "mesh.fsdp": 4}), ref)
  want = _losses(ref)
  assert sorted(want) == [1, 2, 3, 4]

  on_8x1 = str(tmp_path / "on_8x1")
  _cut_after_step_2(ref, on_8x1)
  train.train(h.tiny_config(**OVERRIDES, **{"mesh.data": 8, "mesh.fsdp": 1}), on_8x1)

  on_1 = str(tmp_path / "on_1")  # one device needs its own process
  _cut_after_step_2(ref, on_1)
  args = [sys.executable, "-m", "hyperclip_jax.train", "--config", f"{h.DEMO}:tiny=true", "--workdir", on_1,
          *h.cli_overrides({**OVERRIDES, "optim.schedule.warmup_steps": 0, "mesh.data": 1})]
  proc = subprocess.run(args, cwd=h.ROOT, env=one_device_env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 2" in proc.stderr

  for workdir in (on_8x1, on_1):
    got = _losses(workdir)
    assert sorted(got) == [3, 4], got
    np.testing.assert_allclose([got[3], got[4]], [want[3], want[4]], rtol=1e-4)
