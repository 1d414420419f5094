"""The trainer with task-shaped sets (config.data.task_sets=0.5, sigmoid loss): it runs, and resumes bit-exactly."""
import json
import os
import shutil

from hyperclip_jax import config as config_lib
from hyperclip_jax import train

DEMO = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")


def _tiny():
  config = config_lib.load_config(f"{DEMO}:tiny=true")
  overrides = {"loss.name": "sigmoid", "data.task_sets": "0.5", "evals.zeroshot.tasks": "demo:colour"}
  for k, v in overrides.items():
    config_lib.apply_override(config, k, v)
  return config


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_task_sets_run_trains_and_resumes_exactly(tmp_path, capfd):
  workdir = str(tmp_path / "full")
  train.train(_tiny(), workdir)
  rows = _rows(workdir)
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses and all(0 < x < 1e3 for x in losses)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))  # as if killed right after the step-3 checkpoint
  os.remove(os.path.join(resumed, "metrics.jsonl"))
  train.train(_tiny(), resumed)
  assert "resumed from step 3" in capfd.readouterr().err
  assert _rows(resumed)[-1]["params_checksum"] == rows[-1]["params_checksum"]
