"""model.conv_impl: native and cpu_fast lowerings of conv.Conv compute the same function and gradients.

Covers every (kernel, stride, padding, groups) the encoders use: depthwise 3x3 and 5x5 at stride 1 and 2, 1x1
with and without bias and stride, the 3x3 stride-2 stem on 3 channels, the ViT patch embedding (kernel ==
stride), odd spatial sizes; then whole tiny encoders, and the config key's validation.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax import config as config_lib
from hyperclip_jax import validation
from hyperclip_jax.models import build_image_encoder, conv

TOL = 1e-5
DEMO = str(pathlib.Path(__file__).parents[2] / "configs" / "demo.py")

# (cin, cout, kernel, stride, groups, bias, padding, h, w)
CASES = {
    "dw3_s1": (16, 16, 3, 1, 16, False, None, 9, 9),
    "dw3_s2": (16, 16, 3, 2, 16, False, None, 9, 7),
    "dw5_s1": (8, 8, 5, 1, 8, False, None, 8, 11),
    "dw5_s2": (8, 8, 5, 2, 8, False, None, 11, 8),
    "dw3_s2_even": (8, 8, 3, 2, 8, False, None, 8, 8),
    "pw": (12, 20, 1, 1, 1, False, None, 7, 5),
    "pw_bias": (12, 20, 1, 1, 1, True, None, 5, 5),
    "pw_s2": (12, 20, 1, 2, 1, False, None, 9, 7),
    "pw_pooled_bias": (12, 6, 1, 1, 1, True, None, 1, 1),  # squeeze-excite and the MobileNetV3 head
    "stem3_s2": (3, 16, 3, 2, 1, False, None, 11, 9),
    "patch4": (3, 8, 4, 4, 1, True, 0, 8, 12),
}


def _run(case: tuple, impl: str, seed: int = 0,
         tap_block_bytes: int = conv.TAP_GRAD_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """-> (y, dL/dx, dL/dkernel) for L = sum(y · cotangent), on grouped input [2, 3, H, W, Cin]."""
  cin, cout, k, s, groups, bias, padding, h, w = case
  layer = conv.Conv(cout, k, s, groups=groups, use_bias=bias, padding=padding, impl=impl,
                    tap_block_bytes=tap_block_bytes)
  kx, kp, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (2, 3, h, w, cin), jnp.float32)
  params = layer.init(kp, x)["params"]
  if bias:
    params = dict(params, bias=jax.random.normal(kc, (cout,), jnp.float32))
  y = layer.apply({"params": params}, x)
  cot = jax.random.normal(kc, y.shape, jnp.float32)

  def loss(x, kernel):
    return jnp.sum(layer.apply({"params": dict(params, kernel=kernel)}, x) * cot)

  dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, params["kernel"])
  return np.asarray(y), np.asarray(dx), np.asarray(dk)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_fast_matches_native_forward_and_gradients(name):
  native, fast = _run(CASES[name], "native"), _run(CASES[name], "cpu_fast")
  cin, cout, k, s, _, _, padding, h, w = CASES[name]
  p = conv.same_padding(k, s) if padding is None else padding
  assert native[0].shape == (2, 3, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, cout)
  for what, a, b in zip(("y", "dx", "dkernel"), native, fast):
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=0, atol=TOL * scale, err_msg=f"{name}: {what}")
  assert np.abs(native[2]).max() > 0.1  # the gradient check is not vacuous


# The depthwise cases, and one whose H (12) gives 5x5 stride-2 blocks of 3 rows.
BLOCK_CASES = {**{n: c for n, c in CASES.items() if n.startswith("dw")},
               "dw5_s2_h12": (8, 8, 5, 2, 8, False, None, 12, 9)}


@pytest.mark.parametrize("name", sorted(BLOCK_CASES))
@pytest.mark.parametrize("block_rows", [1, 3])
def test_depthwise_taps_gradient_in_blocks_of_rows_matches_native(name, block_rows):
  """The taps' gradient loops over blocks of rows (whole tensors above, at these sizes). A budget of block_rows
  rows of x gives blocks of the largest divisor of H up to block_rows (1, 2 or 3 rows here; every H > 3, so
  always several blocks), which must give the native gradients too."""
  case = BLOCK_CASES[name]
  cin, _, _, _, _, _, _, h, w = case
  budget = block_rows * 2 * 3 * w * cin * 4  # x is [2, 3, h, w, cin]
  native, blocked = _run(case, "native"), _run(case, "cpu_fast", tap_block_bytes=budget)
  for what, a, b in zip(("dx", "dkernel"), native[1:], blocked[1:]):
    np.testing.assert_allclose(b, a, rtol=0, atol=TOL * max(1.0, float(np.abs(a).max())), err_msg=f"{name}: {what}")


def test_auto_is_cpu_fast_on_cpu_and_unknown_impl_is_refused():
  assert jax.default_backend() == "cpu"
  assert conv.resolve_conv_impl("auto") == "cpu_fast"
  assert conv.resolve_conv_impl("native") == "native"
  with pytest.raises(ValueError, match=r"conv_impl 'xla' is unknown; known: auto, native, cpu_fast"):
    conv.resolve_conv_impl("xla")


def test_cpu_fast_has_no_depthwise_or_pointwise_convolution_and_auto_follows_the_lowering_platform():
  """The point of cpu_fast: the lowered program keeps only the stem's convolution. auto is decided by the
  platform a program is lowered for, not by the process's backend: the CPU program is cpu_fast's, a CUDA
  export from this CPU-only machine has the library convolutions, and neither keeps a runtime branch."""
  enc_of = {impl: build_image_encoder("efficientnet_b0", width_mult=0.1, depth_mult=0.1, conv_impl=impl)
            for impl in conv.CONV_IMPLS}
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(enc_of["native"].init, jax.random.PRNGKey(0), x)

  def forward(impl):
    return jax.jit(lambda v, x: enc_of[impl].apply(v, x))

  def count(text: str, op: str = "stablehlo.convolution") -> int:
    return text.count(op)
  assert count(forward("cpu_fast").lower(variables, x).as_text()) == 1  # the 3x3 stem on 3 channels
  native = count(forward("native").lower(variables, x).as_text())
  assert native > 10
  assert count(forward("auto").lower(variables, x).as_text()) == 1
  compiled = forward("auto").lower(variables, x).compile().as_text()
  assert " conditional(" not in compiled and count(compiled, " convolution(") == 1
  cuda = jax.export.export(forward("auto"), platforms=("cuda",))(variables, x).mlir_module()
  assert count(cuda) == native


def test_pointwise_weight_gradient_compiles_without_a_transposed_copy():
  """Why 1x1 convs are one 2-D dot: XLA's CPU program for the N-d einsum's gradient transposes the cotangent into a
  [D, N] copy before the weight-gradient dot; the 2-D form's program has no transpose or copy at all."""
  x, k = jnp.ones((2, 4, 8, 8, 16), jnp.float32), jnp.ones((16, 24), jnp.float32)

  def compiled(f):
    grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1))
    return jax.jit(grad).lower(x, k).compile().as_text()

  def moves(text: str) -> int:
    return text.count(" transpose(") + text.count(" copy(")
  assert moves(compiled(lambda x, k: jnp.einsum("...c,cd->...d", x, k))) > 0  # what the 2-D form avoids
  assert moves(compiled(conv._pointwise_dot)) == 0


@pytest.mark.parametrize("name,kw", [
    ("efficientnet_b0", dict(width_mult=0.1, depth_mult=0.2)),
    ("mobilenetv3_large_100", dict(width_mult=0.1, depth_mult=0.2, head_features=32)),
])
def test_whole_encoder_features_agree(name, kw):
  """Train-mode features and BatchNorm statistics and eval-mode features (per-layer gradients are above)."""
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 33, 3), jnp.float32)  # odd size: every stride
  variables = jax.jit(build_image_encoder(name, **kw).init)(jax.random.PRNGKey(0), images)  # same for both
  out = {}
  for impl in ("native", "cpu_fast"):
    enc = build_image_encoder(name, conv_impl=impl, **kw)

    def forward(variables, images, enc=enc):  # one program per lowering: the test compiles twice
      train_feats, updates = enc.apply(variables, images, train=True, mutable=["batch_stats"])
      return train_feats, updates["batch_stats"], enc.apply(variables, images)

    out[impl] = jax.device_get(jax.jit(forward)(variables, images))
  for a, b in zip(jax.tree_util.tree_leaves(out["native"]), jax.tree_util.tree_leaves(out["cpu_fast"])):
    np.testing.assert_allclose(b, a, rtol=0, atol=TOL * max(1.0, float(np.abs(a).max())))
  assert np.abs(out["native"][0]).max() > 0.1  # train-mode features (eval ones are ~1e-5 at init)


def test_config_key_is_validated():
  config = config_lib.load_config(f"{DEMO}:tiny=true")
  assert config.model.conv_impl == "auto"
  config_lib.apply_override(config, "model.conv_impl", "fast")
  with pytest.raises(config_lib.ConfigError, match=r"config.model.conv_impl='fast' is unknown; known: auto, native"):
    validation.validate(config, 1)


def test_tap_block_bytes_is_an_argument_of_the_layer_that_reaches_the_taps_gradient():
  """The row-block budget is passed in (Conv.tap_block_bytes / conv2d's argument), not set on the module: a
  one-row budget lowers the taps' gradient to another program than the default's whole-tensor block."""
  x, taps = jnp.ones((1, 1, 12, 5, 4), jnp.float32), jnp.ones((3, 3, 1, 4), jnp.float32)

  def grad_text(budget):
    loss = lambda x, k: jnp.sum(conv.conv2d(x, k, 1, 1, 4, "cpu_fast", budget))
    return jax.jit(jax.grad(loss, argnums=1)).lower(x, taps).as_text()
  one_row = 5 * 4 * 4  # bytes of one row of x
  assert grad_text(one_row) != grad_text(conv.TAP_GRAD_BLOCK_BYTES)
  assert grad_text(conv.TAP_GRAD_BLOCK_BYTES) == grad_text(12 * one_row)  # 12 rows fit either budget: one block
