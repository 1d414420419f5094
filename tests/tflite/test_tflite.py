"""--format tflite end to end, in the TensorFlow venv (`make test-tflite`): classifier.tflite, run by the LiteRT
interpreter, gives the jax artifact's logits on the demo export and on each encoder family; --tflite-int8 writes
the quantised file and scores it on the run's eval images."""
import json
import os
import subprocess

import numpy as np
import pytest
from export_runs import make_run, tiny_config

from hyperclip_jax import export, export_tflite, train
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames

PYTHON = os.environ.get(export_tflite.ENV, "")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def setup_module():
  assert PYTHON, f"run these with `make test-tflite` (it sets {export_tflite.ENV} to .venv-tflite/bin/python)"


def _litert_logits(path, images, tmp_path):
  """classifier.tflite's logits, computed by the LiteRT interpreter in the TensorFlow python."""
  np.savez(tmp_path / "in.npz", images=images)
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run([PYTHON, "-m", "hyperclip_jax.export_tflite", "run", str(path), str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, env=env, capture_output=True)
  return np.load(tmp_path / "out.npz")["logits"]


def _assert_same_logits(out, tmp_path):
  clf = export.load_classifier(str(out))
  images = np.random.default_rng(7).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)  # not the check's images
  want = clf(images)
  for batch in (images, images[3:4]):  # dynamic batch
    got = _litert_logits(out / export_tflite.FILE, batch, tmp_path)
    assert got.shape == (len(batch), len(clf.classes)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:len(batch)] if len(batch) == 5 else want[3:4], rtol=0,
                               atol=1e-4 * np.max(np.abs(want)) + 1e-4)
  assert np.std(want - want.mean(-1, keepdims=True)) > 1e-3  # the classes are told apart


def test_the_demo_export_in_litert_gives_the_jax_logits_and_an_int8_variant(tmp_path):
  workdir = str(tmp_path / "run")
  train.train(tiny_config(), workdir)  # the demo config (tiny), trained by the real trainer
  out = tmp_path / "clf"
  assert export.main(["--workdir", workdir, "--classes", "demo:colour", "--out", str(out), "--format",
                      "stablehlo,tflite", "--tflite-python", PYTHON, "--tflite-int8", "8"]) == 0
  manifest = json.loads((out / export.MANIFEST).read_text())
  entry = manifest["formats"]["tflite"]
  check = entry["check"]
  assert entry["file"] == "classifier.tflite" and entry["dtype"] == "float32"
  assert check["images"] == 8 and 0 <= check["max_abs_diff"] <= check["tolerance"] < 0.1
  assert check["top1_agreement"] == 1.0 and check["tensorflow"] == "2.21.0" and check["ai_edge_litert"] == "2.3.0"
  card = (out / "README.md").read_text("utf-8")
  assert f"max abs diff {check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g})" in card
  assert "LiteRT (ai-edge-litert 2.3.0, converted by TensorFlow 2.21.0)" in card
  _assert_same_logits(out, tmp_path)
  int8 = entry["int8"]
  ev = int8["eval"]
  n_eval = tiny_config().evals.zeroshot.n_eval
  assert int8["representative_images"] == 8 and ev["task"] == "colour" and ev["images"] == n_eval - 8
  assert ev["top1_change"] == pytest.approx(ev["top1_int8"] - ev["top1_jax"])
  assert ev["top1_float32"] == ev["top1_jax"]  # float32 agrees with jax on the eval images too
  assert np.isfinite(ev["max_abs_logit_diff"]) and ev["max_abs_logit_diff"] > check["tolerance"]  # quantised
  assert 0 <= ev["top1_agreement_with_jax"] <= 1 and 0 <= ev["top1_int8"] <= 1
  assert (out / export_tflite.INT8_FILE).stat().st_size < (out / export_tflite.FILE).stat().st_size  # int8 weights
  assert "int8" in card and f"{ev['top1_change']:+.4f}" in card


@pytest.mark.parametrize("variant,encoder", [("hyperclip", "mobilenetv3_small_100"),
                                             ("siglip", "vit_tiny_patch16_224")])
def test_each_encoder_family_converts_with_the_jax_logits(tmp_path, variant, encoder):
  workdir = make_run(tmp_path / "run", variant, encoder)
  names, templates = classnames.resolve("demo:shape")
  out = tmp_path / "clf"
  manifest = export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out),
                                      formats=("stablehlo", "tflite"), tflite_python=PYTHON)
  check = manifest["formats"]["tflite"]["check"]
  assert 0 <= check["max_abs_diff"] <= check["tolerance"] < 0.1 and check["top1_agreement"] == 1.0
  _assert_same_logits(out, tmp_path)
