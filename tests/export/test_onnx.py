"""--format onnx: classifier.onnx has the jax artifact's contract and logits (onnxruntime), and a model card
describes the export."""
import json
import sys

import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_runs import make_run

from hyperclip_jax import export, export_onnx
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames


def _session(out):
  return ort.InferenceSession(str(out / export_onnx.FILE), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant,encoder", [("hyperclip", "efficientnet_b0"), ("hyperclip", "mobilenetv3_small_100"),
                                             ("siglip", "vit_tiny_patch16_224")])
def test_onnx_classifier_gives_the_jax_artifacts_logits(tmp_path, variant, encoder):
  workdir = make_run(tmp_path / "run", variant, encoder)
  names, templates = classnames.resolve("demo:shape")
  out = tmp_path / "clf"
  manifest = export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out),
                                      formats=("stablehlo", "onnx"))
  check = manifest["formats"]["onnx"]["check"]
  assert check["images"] == 8 and 0 <= check["max_abs_diff"] <= check["tolerance"] < 0.1
  assert check["top1_agreement"] == 1.0
  assert json.loads((out / export.MANIFEST).read_text())["formats"]["onnx"]["check"] == check
  model = onnx.load(str(out / export_onnx.FILE))
  (inp,), (outp,) = model.graph.input, model.graph.output
  dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
  assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert dims(inp) == ["N", 32, 32, 3] and outp.name == "logits" and dims(outp) == ["N", len(names)]
  clf = export.load_classifier(str(out))
  images = np.random.default_rng(7).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)  # not the check's images
  want = clf(images)
  session = _session(out)
  for batch in (images, images[3:4]):  # dynamic batch
    got = session.run(["logits"], {"images": batch})[0]
    assert got.shape == (len(batch), len(names)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:len(batch)] if len(batch) == 5 else want[3:4], rtol=0,
                               atol=1e-4 * np.max(np.abs(want)) + 1e-4)
  assert np.std(want - want.mean(-1, keepdims=True)) > 1e-3  # the classes are told apart


def test_a_primitive_without_translation_is_a_one_line_error():
  with pytest.raises(export_onnx.ConversionError, match=r"^jax primitive 'sort' has no ONNX translation here$"):
    export_onnx.convert(lambda x: jnp.sort(x.astype(jnp.float32).reshape(x.shape[0], -1), axis=-1), 4)


def test_a_difference_past_the_tolerance_fails_the_check(tmp_path):
  fn = lambda x: x.astype(jnp.float32).mean((1, 2)) / 255.0  # noqa: E731  [n, 3] "logits"
  path = tmp_path / "m.onnx"
  path.write_bytes(export_onnx.convert(fn, 4))
  result = export_onnx.check(str(path), fn, 4)
  assert result["max_abs_diff"] <= 1e-6 and result["tolerance"] == pytest.approx(2e-4)
  with pytest.raises(export_onnx.ConversionError, match=r"differs from the jax artifact by 0.01 \(tolerance "):
    export_onnx.check(str(path), lambda x: fn(x) + 0.01, 4)


def test_missing_onnxruntime_is_a_one_line_error_before_any_export(trained_run, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(out),
                      "--format", "onnx"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and 'needs onnx and onnxruntime: pip install "hyperclip_jax[onnx]"' in err
  assert not out.exists()


def test_cli_onnx_export_writes_a_model_card(trained_run, tmp_path, capsys):
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(out),
                      "--format", "stablehlo,onnx"]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["README.md", "classes.json", "classifier.jaxexport",
                                                   "classifier.onnx", "manifest.json", "params"]
  card = (out / "README.md").read_text("utf-8")
  with open(f"{trained_run}/final_eval.json") as f:
    final = json.load(f)
  assert f"| zeroshot/colour/top1 | {final['colour']['top1']:.4f} |" in card
  assert "step 2" in card and "`efficientnet_b0`" in card and "`hyperclip`" in card
  assert "8 classes, in logit order (classes.json): `red`, `green`" in card
  assert "resize to 32x32 (bilinear)" in card and "uint8 RGB [N, 32, 32, 3]" in card
  check = json.loads((out / export.MANIFEST).read_text())["formats"]["onnx"]["check"]
  assert f"max abs diff {check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g})" in card
  assert "US20260094424A1" in card and "Apache-2.0" in card
