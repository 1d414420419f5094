"""Linear probe on frozen embeddings: the regression fits what is linearly separable; hyperclip-eval runs it."""
import json
import os

import numpy as np

from hyperclip_jax import evaluate
from hyperclip_jax.evaluators import linear_probe


def test_softmax_regression_separates_linearly_separable_classes():
  rng = np.random.default_rng(0)
  centers = 3.0 * rng.normal(size=(4, 8))
  y = rng.integers(0, 4, 400)
  x = centers[y] + 0.5 * rng.normal(size=(400, 8))
  predict = linear_probe.fit_softmax_regression(x[:300], y[:300], 4)
  assert (predict(x[300:]).argmax(1) == y[300:]).mean() == 1.0
  shuffled = rng.permutation(y[:300])  # labels unrelated to the features: near chance on held-out data
  predict = linear_probe.fit_softmax_regression(x[:300], shuffled, 4)
  assert (predict(x[300:]).argmax(1) == y[300:]).mean() < 0.6


def test_eval_cli_adds_linear_probe_metrics(trained_run, capsys):
  assert evaluate.main(["--workdir", trained_run, "--linear-probe-train", "48"]) == 0
  assert "linear probe colour: top1" in capsys.readouterr().out
  with open(os.path.join(trained_run, "eval", "step_2.json")) as f:
    saved = json.load(f)
  probe = {k: r for k, r in saved["results"].items() if k.startswith("linear_probe/")}
  assert len(probe) == 7 and all(r["num_train"] == 48 and r["num_test"] == 48 for r in probe.values())
  assert all(0.0 <= saved["metrics"][f"{key}/top1"] <= 1.0 for key in probe)
