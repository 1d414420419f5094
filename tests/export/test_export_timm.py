"""--format timm without torch: the files' layout is timm's (the golden state-dict layouts), the config carries
timm's pretrained-config keys, the written weights + head reproduce the jax artifact's logits (read back through
our timm -> Flax converter), and a scaled encoder is refused in one line. The timm check itself (torch + timm)
is tests/export/timm_parity.py, run by `make timm-parity`."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from export_runs import make_run

from hyperclip_jax import export, export_timm
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames
from hyperclip_jax.models import build_image_encoder, convert_timm, two_towers

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "golden")
UNSCALED = {"model.image.width_mult": 1.0, "model.image.depth_mult": 1.0}


@pytest.fixture
def no_torch_python(monkeypatch):
  monkeypatch.delenv(export_timm.PYTHON_ENV, raising=False)
  monkeypatch.setattr(export_timm, "DEFAULT_PYTHON", "/nonexistent/python")


@pytest.mark.parametrize("variant,encoder", [("hyperclip", "mobilenetv3_small_100"), ("linear", "efficientnet_b0")])
def test_timm_files_have_timms_layout_and_reproduce_the_logits(tmp_path, no_torch_python, variant, encoder):
  workdir = make_run(tmp_path / "run", variant, encoder, **UNSCALED)
  names, templates = classnames.resolve("demo:shape")
  out = tmp_path / "clf"
  manifest = export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out),
                                      formats=("stablehlo", "timm"))
  entry = manifest["formats"]["timm"]
  assert entry["check"]["status"] == "not run" and "--timm-python .venv-golden/bin/python" in entry["check"]["reason"]
  assert sorted(os.listdir(out / "timm")) == ["config.json", "head.safetensors", "model.safetensors"]
  assert json.loads((out / export.MANIFEST).read_text())["formats"]["timm"] == entry
  assert "| timm/ | timm | not checked: no Python with torch + timm" in (out / "README.md").read_text()

  cfg = json.loads((out / "timm" / "config.json").read_text())
  pre = cfg["pretrained_cfg"]
  assert cfg["architecture"] == encoder and cfg["num_classes"] == pre["num_classes"] == 32  # tiny embed_dim
  assert pre["input_size"] == [3, 32, 32] and pre["mean"] == pre["std"] == [0.5, 0.5, 0.5]
  assert pre["interpolation"] == "bilinear" and pre["crop_pct"] == 1.0 and pre["classifier"] == "classifier"
  assert pre["custom_load"] is False
  assert cfg["label_names"] == names and cfg["hyperclip_head"]["num_classes"] == len(names)
  assert cfg["model_args"] == {}

  state = export_timm.load_safetensors(str(out / "timm" / "model.safetensors"))
  golden = np.load(os.path.join(GOLDEN, f"{encoder}_64.npz"))
  want = {k: tuple(s) for k, s, _ in json.loads(str(golden["entries"]))}
  got = {k: v.shape for k, v in state.items()}
  assert want.pop("classifier.weight")[1] == got.pop("classifier.weight")[1] == cfg["num_features"]
  assert want.pop("classifier.bias") == (1000,) and got.pop("classifier.bias") == (32,)
  assert got == want  # every timm entry, with timm's shapes (convs OIHW), num_batches_tracked included

  head = export_timm.load_safetensors(str(out / "timm" / "head.safetensors"))
  assert head["classes"].shape == (len(names), 32)
  np.testing.assert_allclose(np.linalg.norm(head["classes"], axis=-1), 1.0, atol=1e-5)
  assert float(head["scale"]) == pytest.approx(manifest["temperature"]) and float(head["bias"]) == manifest["bias"]

  # timm's state dict -> our encoder (convert_timm, the inverse mapping), timm's classifier as the projection,
  # the head formula: the jax artifact's logits
  variables = convert_timm.from_timm(encoder, state)
  images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  x = jnp.asarray(images, jnp.float32) / 255.0
  x = (x - np.asarray(pre["mean"])) / np.asarray(pre["std"])
  features = build_image_encoder(encoder).apply(variables, x, train=False)
  z = two_towers.l2_normalize(features @ state["classifier.weight"].T + state["classifier.bias"])
  logits = np.asarray(z @ head["classes"].T * head["scale"] + head["bias"])
  want_logits = export.load_classifier(str(out))(images)
  np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-4 * np.abs(want_logits).max() + 1e-4)
  assert np.std(want_logits - want_logits.mean(-1, keepdims=True)) > 1e-3  # the classes are told apart


def test_a_scaled_encoder_is_refused_in_one_line_before_any_export(trained_run, tmp_path, capsys):
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(out),
                      "--format", "stablehlo,timm"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert ("--format timm: efficientnet_b0 with width_mult=0.1, depth_mult=0.2 has no timm name (timm's "
          "efficientnet_b0 builder fixes its multipliers") in err
  assert not out.exists()


def test_a_missing_timm_python_is_a_one_line_error():
  with pytest.raises(export_timm.TimmExportError, match=r"^--timm-python '/no/python' is not an executable"):
    export_timm.find_python("/no/python")


def test_a_difference_past_the_tolerance_fails_the_check(tmp_path, monkeypatch):
  want = np.linspace(-5.0, 5.0, 8 * 3, dtype=np.float32).reshape(8, 3)
  versions = {"timm": "x", "torch": "y"}
  monkeypatch.setattr(export_timm, "run_reference", lambda *a: (want + 1e-4, versions))
  result = export_timm.check(str(tmp_path), lambda images: want, 4, "python")
  assert result["max_abs_diff"] == pytest.approx(1e-4, abs=1e-6) and result["tolerance"] == pytest.approx(6e-4)
  assert result["top1_agreement"] == 1.0 and result["timm"] == "x"
  monkeypatch.setattr(export_timm, "run_reference", lambda *a: (want + 0.01, versions))
  with pytest.raises(export_timm.TimmExportError, match=r"^--format timm: the timm model with timm/head.safetensors differs from the jax artifact by 0.01 \(tolerance "):
    export_timm.check(str(tmp_path), lambda images: want, 4, "python")


def test_safetensors_round_trip(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.zeros((), np.int64),
             "s": np.asarray(2.5, np.float32)}
  export_timm.save_safetensors(str(tmp_path / "t.safetensors"), tensors)
  raw = (tmp_path / "t.safetensors").read_bytes()
  n = int.from_bytes(raw[:8], "little")
  assert n % 8 == 0 and json.loads(raw[8:8 + n])["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
  back = export_timm.load_safetensors(str(tmp_path / "t.safetensors"))
  assert sorted(back) == ["a", "n", "s"] and back["n"].dtype == np.int64 and back["s"].shape == ()
  np.testing.assert_array_equal(back["a"], tensors["a"])
