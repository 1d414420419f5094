"""bench/studies/reproduce.py: the tiny study's outputs come from its runs' metrics files, and a rerun is identical."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "studies", "reproduce.py")
VARIANTS = ("siglip", "hyperclip", "token")


def _load_script():
  spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
  spec.loader.exec_module(module)
  return module


def _run_study(out, env) -> None:
  # One CPU device (not the suite's 8 fake ones): the study's ~11 small runs compile and run faster.
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _final_row(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return next(r for r in reversed(rows) if "params_checksum" in r)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_device_env):
  out = tmp_path_factory.mktemp("study")
  _run_study(out, one_device_env)
  with open(out / "results.json", encoding="utf-8") as f:
    return out, json.load(f)


def test_study_writes_markdown_json_and_plot(study):
  out, results = study
  with open(out / "results.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  md = (out / "results.md").read_text(encoding="utf-8")
  assert "## Verdicts" in md and "## Ablations" in md and "bench/studies/reproduce.py --tiny" in md
  names = set(results["runs"])
  assert {f"{v}_s{s}" for v in VARIANTS for s in (0, 1)} <= names
  assert names == {f"{v}_s{s}" for v in VARIANTS for s in (0, 1)} | {"abl_bn_global", "abl_cond_captions"}
  throughput = json.loads((out / "throughput.json").read_text(encoding="utf-8"))
  assert set(throughput["runs"]) == names and all(r["images_per_sec"] > 0 for r in throughput["runs"].values())


def test_table_numbers_are_those_of_the_runs_metrics_files(study):
  out, results = study
  finals = {name: _final_row(out / "runs" / name) for name in results["runs"]}
  for name, run in results["runs"].items():
    assert run["params_checksum"] == finals[name]["params_checksum"]
    assert run["top1"] == {t: finals[name][f"zeroshot/{t}/top1"] for t in run["top1"]}
    assert run["curves"][next(iter(run["top1"]))][-1][0] == 8  # the last point is the final evaluation
  lines = (out / "results.md").read_text(encoding="utf-8").splitlines()
  for task in results["summary"]:
    row = next(line for line in lines if line.startswith(f"| {task} |"))
    for v in VARIANTS:
      values = np.array([finals[f"{v}_s{s}"][f"zeroshot/{task}/top1"] for s in (0, 1)])
      assert f"{values.mean():.3f} +- {values.std(ddof=1):.3f}" in row, (task, v, row)
  abl = next(line for line in lines if line.startswith("| abl_bn_global |"))
  assert abl.endswith(" | ".join(f"{finals['abl_bn_global'][f'zeroshot/{t}/top1']:.3f}" for t in results["summary"])
                      + " |")


def test_values_differ_across_variants_and_seeds(study):
  _, results = study
  main = {n: r for n, r in results["runs"].items() if not r["ablation"]}
  assert len({r["params_checksum"] for r in main.values()}) == len(main) == 6
  assert len({r["final_loss"] for r in main.values()}) == 6
  assert len({tuple(r["top1"].values()) for r in main.values()}) > 1
  # condition=train_captions changes only the evaluation: it trains the very same model as hyperclip_s0.
  assert results["runs"]["abl_cond_captions"]["params_checksum"] == results["runs"]["hyperclip_s0"]["params_checksum"]
  assert results["runs"]["abl_bn_global"]["params_checksum"] != results["runs"]["hyperclip_s0"]["params_checksum"]


def test_rerun_gives_identical_results_json(study, tmp_path, one_device_env):
  # The second study retrains one of its runs (an ablation: a variant, a seed and an override) and reads the others
  # back from a copy of the first study's workdirs: a full second study would double this test's time.
  out, _ = study
  shutil.copytree(out / "runs", tmp_path / "runs")
  retrained = ("abl_bn_global",)
  for name in retrained:
    shutil.rmtree(tmp_path / "runs" / name)
  _run_study(tmp_path, one_device_env)
  assert json.loads((tmp_path / "throughput.json").read_text(encoding="utf-8"))["trained"] == len(retrained)
  for name in retrained:
    assert _final_row(tmp_path / "runs" / name) == _final_row(out / "runs" / name)
  assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_verdict_says_who_wins_beyond_seed_noise_and_whether_token_explains_it():
  reproduce = _load_script()
  s, t = [0.50, 0.52, 0.51], [0.49, 0.51, 0.50]
  text = reproduce.verdict("colour", {"siglip": s, "token": t, "hyperclip": [0.90, 0.92, 0.91]})
  assert "HyperCLIP beats SigLIP** by +40.0 points" in text and "token does not explain it" in text
  text = reproduce.verdict("colour", {"siglip": s, "token": [0.90, 0.92, 0.91], "hyperclip": [0.91, 0.90, 0.92]})
  assert "token explains it" in text
  text = reproduce.verdict("colour", {"siglip": s, "token": t, "hyperclip": [0.52, 0.50, 0.53]})
  assert text.startswith("colour: no difference beyond seed noise: HyperCLIP - SigLIP +0.7 points")
  assert "SigLIP beats HyperCLIP** by +30.0" in reproduce.verdict(
      "colour", {"siglip": [0.9, 0.9, 0.9], "token": t, "hyperclip": [0.6, 0.6, 0.6]})


def test_full_study_trains_the_papers_sigmoid_loss_not_the_demos_softmax():
  reproduce = _load_script()
  mode = reproduce.MODES["full"]
  assert {reproduce.make_config(mode, run).loss.name for run in reproduce.study(mode, 16)} == {"sigmoid"}
