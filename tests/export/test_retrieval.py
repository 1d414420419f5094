"""Image-text retrieval: Recall@K from a similarity matrix, and hyperclip-eval's retrieval on a trained run."""
import json
import os

import numpy as np
import pytest

from hyperclip_jax import evaluate
from hyperclip_jax.evaluators import retrieval


def test_recall_at_k_counts_ranks_in_both_directions():
  sim = np.array([[0.9, 0.1, 0.0],   # image 0: its caption first
                  [0.8, 0.5, 0.7],   # image 1: its caption third
                  [0.0, 0.6, 0.4]])  # image 2: its caption second
  r = retrieval.recall_at_k(sim, ks=(1, 2, 3))
  assert r["i2t_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == pytest.approx(2 / 3) and r["i2t_r3"] == 1.0
  # caption 0: image 0 first; caption 1: image 2 (0.6) beats image 1 (0.5); caption 2: image 1 (0.7) beats 2
  assert r["t2i_r1"] == pytest.approx(1 / 3) and r["t2i_r2"] == 1.0


def test_ties_count_in_the_models_favour():
  assert retrieval.recall_at_k(np.ones((4, 4)), ks=(1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}


def test_eval_cli_adds_retrieval_metrics(trained_run, capsys):
  assert evaluate.main(["--workdir", trained_run, "--retrieval-pairs", "18"]) == 0
  assert "retrieval demo (16 pairs): i2t_r1" in capsys.readouterr().out  # rounded down to set_size=4
  with open(os.path.join(trained_run, "eval", "step_2.json")) as f:
    saved = json.load(f)
  m = saved["metrics"]
  for d in ("i2t", "t2i"):
    r1, r5, r10 = (m[f"retrieval/demo/{d}_r{k}"] for k in (1, 5, 10))
    assert 0.0 <= r1 <= r5 <= r10 <= 1.0 and r10 >= 10 / 16  # ties favour the model: at least chance
  assert saved["results"]["retrieval/demo"]["num_pairs"] == 16
