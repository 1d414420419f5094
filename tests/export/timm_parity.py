"""--format timm with torch + timm: timm.create_model + the written files + the head formula give the jax
artifact's logits. Not collected by `make test` (no test_ prefix: the package venv has no torch); run by
`make timm-parity`, which points $HYPERCLIP_TIMM_PYTHON at .venv-golden/bin/python (torch 2.14.1, timm 1.0.29):
  HYPERCLIP_TIMM_PYTHON=.venv-golden/bin/python .venv/bin/python -m pytest -q tests/export/timm_parity.py
"""
import json
import os
import subprocess

import numpy as np
import pytest
from export_runs import make_run

from hyperclip_jax import export, export_timm
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames

PYTHON = os.environ.get(export_timm.PYTHON_ENV, "")
UNSCALED = {"model.image.width_mult": 1.0, "model.image.depth_mult": 1.0}


def test_the_torch_python_has_timm():
  assert PYTHON, f"set {export_timm.PYTHON_ENV} to a Python with torch + timm (make timm-parity does)"
  out = subprocess.run([PYTHON, "-c", "import timm, torch; print(timm.__version__, torch.__version__)"],
                       capture_output=True, text=True, check=True).stdout.split()
  assert out[0] == "1.0.29" and out[1].split("+")[0] == "2.14.1"  # the Makefile's pins (any CUDA tag)


@pytest.mark.parametrize("variant,encoder", [("hyperclip", "efficientnet_b0"), ("hyperclip", "mobilenetv3_small_100"),
                                             ("conv", "mobilenetv3_small_100"), ("siglip", "vit_tiny_patch16_224")])
def test_timm_create_model_gives_the_jax_artifacts_logits(tmp_path, variant, encoder):
  workdir = make_run(tmp_path / "run", variant, encoder, **UNSCALED)
  names, templates = classnames.resolve("demo:shape")
  out = tmp_path / "clf"
  manifest = export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out),
                                      formats=("stablehlo", "timm"), timm_python=PYTHON)
  check = manifest["formats"]["timm"]["check"]
  assert check["status"] == "passed" and check["timm"] == "1.0.29" and check["images"] == 8
  assert 0 <= check["max_abs_diff"] <= check["tolerance"] < 0.1 and check["top1_agreement"] == 1.0
  print(json.dumps({"encoder": encoder, "variant": variant, **check}))
  # other images than the check's, through the same create_model recipe (timm_reference.py)
  images = np.random.default_rng(11).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  got, _ = export_timm.run_reference(PYTHON, str(out / "timm"), images)
  want = export.load_classifier(str(out))(images)
  assert got.shape == (5, len(names))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max() + 1e-4)
  assert np.std(want - want.mean(-1, keepdims=True)) > 1e-3  # the classes are told apart
