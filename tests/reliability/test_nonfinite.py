"""A NaN/Inf step stops the run with a diagnostic and keeps the last good checkpoint; skip_nonfinite_steps
skips and counts such steps instead. The fault: one NaN pixel in the batch of step 6 (a corrupt image)."""
import json
import os
import re

import numpy as np
from fault_runner import faulty_iterators, nan_pixel
from harness import CONFIG, ROOT, complete_steps, error_line

from hyperclip_jax import guards, train
from hyperclip_jax.data import input_pipeline


def _run_poisoned(workdir, monkeypatch, *extra):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(input_pipeline, "make_train_iterator",
                      faulty_iterators(input_pipeline.make_train_iterator, 6, nan_pixel))
  return train.main(["--workdir", str(workdir), *CONFIG, *extra])


def test_nonfinite_step_stops_with_a_diagnostic(tmp_path, capfd, monkeypatch):
  assert _run_poisoned(tmp_path, monkeypatch) == 2
  line = error_line(capfd.readouterr().err)
  assert "step 6: non-finite training step (loss nan)" in line
  assert re.search(r"all \d+ gradient leaves non-finite", line)
  assert "batch data indices 160..191 (32 examples" in line  # step 6 of batch 32 reads stream positions 160..191
  assert "non-finite image in examples 160;" in line  # the poisoned row, by its stream position
  assert "the last good checkpoint (step 4) is kept" in line
  assert complete_steps(str(tmp_path)) == [4]


def test_skip_nonfinite_steps_skips_and_counts(tmp_path, capfd, monkeypatch):
  assert _run_poisoned(tmp_path, monkeypatch, "--config.skip_nonfinite_steps=true") == 0
  assert "update skipped (1 so far, config.skip_nonfinite_steps)" in capfd.readouterr().err
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  trained = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in trained if not np.isfinite(r["train/loss"])] == [6]
  assert trained[-1]["train/nonfinite_skipped"] == 1
  with open(os.path.join(tmp_path, "checkpoints", "12", "meta", "metadata")) as f:
    assert json.load(f)["_run"]["skipped_nonfinite"] == 1  # the count survives a resume


def test_report_names_the_first_nonfinite_leaves_and_their_subtrees():
  paths = ["['b']", "['img']['stem']['kernel']", "['img']['head']['bias']", "['txt']['embed']"]
  line = guards.nonfinite_report(9, float("inf"), np.array([True, False, True, False]), np.ones(4, bool), paths,
                                 {"index": np.arange(64, 96), "image": np.zeros((32, 2, 2, 3), np.float32)})
  assert line.startswith("step 9: non-finite training step (loss inf); 2 of 4 gradient leaves non-finite, first "
                         "['img']['stem']['kernel'], ['txt']['embed'] (subtrees ['img'], ['txt'])")
  assert line.endswith("batch data indices 64..95 (32 examples on this host)")
