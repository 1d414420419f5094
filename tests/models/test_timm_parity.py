"""Our image encoders compute what timm's do, layer for layer: parity against stored timm outputs.

tests/models/golden/<name>_<size>.npz were written by `make golden` (make_golden.py beside this file, in a torch
venv): timm's pooled pre-logits features [2, C] for deterministic weights and images that golden_weights.py
regenerates here without torch. Each test converts the same state dict with `from_timm`, runs our encoder
in eval mode on the same images and compares.

Tolerance: max |ours - timm| <= RTOL * max(1, max |timm|), with RTOL = 1e-5. The reference is timm in float64,
so this bounds our float32 error (measured: CNNs <= 2e-7 absolute, ViTs <= 1e-6 relative; timm's own
float32 run is as close).
It is tighter than needed for float noise on purpose: a BatchNorm eps of 1e-3 instead of 1e-5, a LayerNorm
eps of 1e-5 instead of timm ViT's 1e-6 or tanh-GELU each move the features by 1e-4 to 6e-4 relative, and a
wrongly resampled ViT position embedding by 5e-3 (bilinear) to 0.2 (no antialias).
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax.models import build_image_encoder, image_encoder_names
from hyperclip_jax.models.convert_timm import from_timm

HERE = pathlib.Path(__file__).parent
GOLDEN = sorted((HERE / "golden").glob("*.npz"))
RTOL = 1e-5

_spec = importlib.util.spec_from_file_location("golden_weights", HERE / "golden_weights.py")
golden_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_weights)


def _load(path: pathlib.Path) -> dict:
  with np.load(path) as z:
    g = {k: z[k] for k in z.files}
  g["model"], g["entries"] = str(g["model"]), json.loads(str(g["entries"]))
  if int(g["recipe"]) != golden_weights.RECIPE:
    pytest.fail(f"{path.name} was made with golden recipe {int(g['recipe'])}, golden_weights.py is at "
                f"{golden_weights.RECIPE}: rerun `make golden`")
  return g


def _shapes(tree) -> dict:
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@pytest.fixture(scope="module", params=GOLDEN, ids=lambda p: p.stem)
def golden(request) -> dict:
  """One golden file plus its state dict converted by from_timm (built once: ViT-B's takes seconds)."""
  g = _load(request.param)
  g["variables"] = from_timm(g["model"], golden_weights.golden_state_dict(g["entries"]))
  return g


def test_every_encoder_has_a_golden():
  covered = {_load(p)["model"] for p in GOLDEN}
  assert set(image_encoder_names()) <= covered, sorted(set(image_encoder_names()) - covered)


def test_golden_weights_are_deterministic_with_nontrivial_bn_stats():
  entries = [("bn.weight", [4], "float32"), ("bn.bias", [4], "float32"), ("bn.running_mean", [4], "float32"),
             ("bn.running_var", [4], "float32"), ("bn.num_batches_tracked", [], "int64"),
             ("fc.weight", [3, 400], "float32")]
  a, b = golden_weights.golden_state_dict(entries), golden_weights.golden_state_dict(entries)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert np.all(a["bn.running_var"] >= 0.5) and np.all(a["bn.running_var"] <= 2.0)
  assert np.abs(a["bn.running_mean"]).max() > 0 and np.abs(a["bn.bias"]).max() > 0
  assert a["bn.num_batches_tracked"].dtype == np.int64 and a["bn.num_batches_tracked"].shape == ()
  assert abs(a["fc.weight"].std() - 400 ** -0.5) < 0.1 * 400 ** -0.5  # N(0, 1/fan_in)
  img = golden_weights.golden_images(8)
  assert img.shape == (2, 8, 8, 3) and img.dtype == np.float32 and img.min() >= -1 and img.max() <= 1
  np.testing.assert_array_equal(golden_weights.to_nchw(img)[:, 1], img[..., 1])


def test_from_timm_fills_exactly_the_encoders_variables(golden):
  """Same tree, same shapes as the encoder's own init (no missing, extra or transposed leaf)."""
  enc = build_image_encoder(golden["model"])
  x = jnp.zeros((1, enc.default_size, enc.default_size, 3), jnp.float32)
  init = jax.eval_shape(partial(enc.init, train=False), jax.random.key(0), x)
  ours = golden["variables"]
  for col in ("params", "batch_stats"):
    assert _shapes(ours.get(col, {})) == _shapes(init.get(col, {})), col


def test_param_count_matches_timm(golden):
  """timm's parameters() without the classifier (BN running stats are buffers, not parameters)."""
  params = golden["variables"]["params"]
  count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
  assert count == int(golden["param_count"])


def test_default_size_matches_timm(golden):
  assert build_image_encoder(golden["model"]).default_size == int(golden["default_size"])


# Same params, different lowering: parity under each ("auto" is one of these two; test_conv_impl checks which).
@pytest.mark.parametrize("conv_impl", ["native", "cpu_fast"])
def test_features_match_timm(golden, conv_impl):
  enc = build_image_encoder(golden["model"], conv_impl=conv_impl)
  images = golden_weights.golden_images(int(golden["size"]), int(golden["batch"]), int(golden["image_seed"]))
  feats = jax.jit(partial(enc.apply, train=False))(golden["variables"], jnp.asarray(images))  # [B, C]
  expected = golden["features"]
  assert feats.shape == expected.shape
  err = float(np.abs(np.asarray(feats, np.float64) - expected).max())
  tol = RTOL * max(1.0, float(np.abs(expected).max()))
  assert err <= tol, f"{golden['model']}@{int(golden['size'])} ({conv_impl}): max abs diff {err:.3g} > {tol:.3g}"
