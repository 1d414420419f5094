"""hyperclip-eval on a finished run: the same zero-shot results the trainer reported, stable metric names."""
import json
import os

import pytest

from hyperclip_jax import evaluate

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")


def test_eval_reproduces_the_trainers_final_zero_shot_results(trained_run, capsys):
  assert evaluate.main(["--workdir", trained_run]) == 0
  out = capsys.readouterr().out
  assert "top1/chance" in out and "step 2; results:" in out
  with open(os.path.join(trained_run, "eval", "step_2.json")) as f:
    saved = json.load(f)
  with open(os.path.join(trained_run, "final_eval.json")) as f:
    final = json.load(f)
  assert saved["step"] == 2 and set(saved["results"]) == set(final) == {"colour", "shape", "position"}  # tiny=true
  for task, r in final.items():
    assert saved["results"][task]["top1"] == pytest.approx(r["top1"], abs=1e-9)
    assert saved["metrics"][f"zeroshot/{task}/top1"] == pytest.approx(r["top1"], abs=1e-9)
    assert saved["metrics"][f"zeroshot/{task}/top5"] == pytest.approx(r["top5"], abs=1e-9)


def test_eval_errors_are_one_line(tmp_path, capsys):
  assert evaluate.main(["--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "has no config.json" in err
  assert evaluate.main(["--workdir", str(tmp_path), "--config", f"{DEMO}:tiny=true",
                        "--config.evals.zeroshot.tasks=imagenet21k"]) == 2
  assert "config.evals.zeroshot.tasks='imagenet21k' is unknown" in capsys.readouterr().err
