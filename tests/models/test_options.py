"""EncoderOptions: checked once by validate_options, passed as one value to every block, and honoured there.

The block test compares an EfficientNet MBConv block (1x1 expand, depthwise 5x5, squeeze-excite, 1x1 project,
three BatchNorms with generated affines, skip) built from an options object against the same block written
here directly with lax.conv_general_dilated, for every conv_impl, norm_mode and bn_stats.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hyperclip_jax.models import build_image_encoder, conv, efficientnet
from hyperclip_jax.models.options import EncoderOptions, validate_options

TOL = 1e-5


def test_defaults_and_dtype_normalised():
  assert validate_options() == EncoderOptions("auto", "residual", None, "group")
  opts = validate_options("native", "replace", "bfloat16", "global")
  assert opts == EncoderOptions("native", "replace", jnp.dtype(jnp.bfloat16), "global")
  assert validate_options(dtype=jnp.float16).dtype == jnp.dtype("float16")


@pytest.mark.parametrize("kw,message", [
    (dict(conv_impl="xla"), "conv_impl='xla' is unknown; known: auto, native, cpu_fast"),
    (dict(norm_mode="add"), "norm_mode='add' is unknown; known: residual, replace"),
    (dict(bn_stats="batch"), "bn_stats='batch' is unknown; known: group, global"),
    (dict(dtype="int8"), "dtype='int8' is unknown; known: float32, bfloat16, float16, None"),
    (dict(dtype="f33"), "dtype='f33' is unknown; known: float32, bfloat16, float16, None"),
    (dict(conv_impl=None), "conv_impl=None is unknown; known: auto, native, cpu_fast"),
])
def test_bad_value_is_refused_in_one_line_naming_key_and_allowed_values(kw, message):
  with pytest.raises(ValueError) as err:
    validate_options(**kw)
  assert str(err.value) == message


def test_keys_rename_the_key_in_the_message():
  keys = {"conv_impl": "config.model.conv_impl", "bn_stats": "config.model.image.bn_stats"}
  with pytest.raises(ValueError, match=r"^config\.model\.conv_impl='fast' is unknown; known: auto, native"):
    validate_options(conv_impl="fast", keys=keys)
  with pytest.raises(ValueError, match=r"^norm_mode='x' is unknown"):  # a key the mapping leaves out
    validate_options(norm_mode="x", keys=keys)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100", "vit_tiny_patch16_224"])
def test_every_encoder_factory_validates_its_options(name):
  with pytest.raises(ValueError, match=r"^conv_impl='xla' is unknown"):
    build_image_encoder(name, conv_impl="xla")
  with pytest.raises(ValueError, match=r"^norm_mode='add' is unknown"):
    build_image_encoder(name, norm_mode="add")


@pytest.mark.parametrize("name,kw", [
    ("efficientnet_b0", dict(width_mult=0.25, depth_mult=0.34)),
    ("mobilenetv3_small_100", dict(width_mult=0.25, depth_mult=0.5, head_features=32)),
    ("vit_tiny_patch16_224", dict(width=32, heads=2, depth=2, mlp_dim=64, patch_size=8, image_size=32)),
])
def test_every_block_receives_the_encoders_one_options_object(name, kw):
  bn_stats = "group" if name.startswith("vit") else "global"
  enc = build_image_encoder(name, conv_impl="native", norm_mode="replace", dtype="bfloat16", bn_stats=bn_stats,
                            **kw)
  assert enc.options == EncoderOptions("native", "replace", jnp.dtype("bfloat16"), bn_stats)
  seen = {"options": [], "conv": set(), "norm": set()}

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if hasattr(mod, "options"):
      seen["options"].append(mod.options)
    if isinstance(mod, conv.Conv):
      seen["conv"].add((mod.impl, mod.dtype))
    if type(mod).__name__ == "ConditionedNorm":
      seen["norm"].add((mod.mode, mod.dtype, mod.stats if mod.kind == "batch" else bn_stats))
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(enc.init, jax.random.PRNGKey(0), images)
  assert len(seen["options"]) >= 3 and all(o is enc.options for o in seen["options"])
  assert seen["conv"] == {("native", jnp.dtype("bfloat16"))}
  assert seen["norm"] == {("replace", jnp.dtype("bfloat16"), bn_stats)}


# ---- an MBConv block from an options object vs the same block written directly with lax.conv ------------------

SPEC = efficientnet.BlockSpec("ir", in_chs=8, out_chs=8, mid_chs=16, se_chs=2, kernel=5, stride=1, drop_path=0.0)


def _ref_conv(x, p, stride=1, groups=1):
  k = p["kernel"].shape[0]
  pad = conv.same_padding(k, stride)
  y = lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), p["kernel"], (stride, stride), [(pad, pad)] * 2,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                               precision=lax.Precision.HIGHEST)
  y = y.reshape(x.shape[:-3] + y.shape[1:])
  return y + p["bias"] if "bias" in p else y


def _ref_bn(x, p, gen, mode, stats, eps=1e-5):
  axes = (0, 1, 2, 3) if stats == "global" else (1, 2, 3)  # x [G, S, H, W, C]
  mean = x.mean(axes, keepdims=True)
  var = jnp.square(x - mean).mean(axes, keepdims=True)
  ds, db = gen["scale"][:, None, None, None], gen["bias"][:, None, None, None]  # [G, 1, 1, 1, C]
  scale, bias = (p["scale"] * (1 + ds), p["bias"] + db) if mode == "residual" else (1 + ds, db)
  return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _ref_block(params, generated, x, mode, stats):
  p, g = params, generated
  h = jax.nn.silu(_ref_bn(_ref_conv(x, p["conv_pw"]), p["bn1"], g["bn1"], mode, stats))
  h = jax.nn.silu(_ref_bn(_ref_conv(h, p["conv_dw"], groups=SPEC.mid_chs), p["bn2"], g["bn2"], mode, stats))
  s = h.mean((-3, -2), keepdims=True)
  s = _ref_conv(jax.nn.silu(_ref_conv(s, p["se"]["conv_reduce"])), p["se"]["conv_expand"])
  h = h * jax.nn.sigmoid(s)
  return _ref_bn(_ref_conv(h, p["conv_pwl"]), p["bn3"], g["bn3"], mode, stats) + x


@pytest.mark.parametrize("impl", conv.CONV_IMPLS)
@pytest.mark.parametrize("mode,stats", [("residual", "group"), ("replace", "global")])
def test_block_from_options_matches_a_direct_lax_conv_block(impl, mode, stats):
  block = efficientnet.MBConvBlock(SPEC, validate_options(impl, mode, None, stats))
  kx, kp, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (2, 3, 9, 7, SPEC.in_chs), jnp.float32)  # [G, S, H, W, C]
  variables = block.init(kp, x)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(kg, a.shape), variables["params"])  # bias != 0
  generated = jax.tree.map(lambda a: 0.3 * jax.random.normal(kg, (2,) + a.shape), variables["generated"])

  with jax.default_matmul_precision("highest"):
    y, _ = jax.jit(lambda p, g, x: block.apply(
        {"params": p, "generated": g, "batch_stats": variables["batch_stats"]}, x, train=True,
        mutable=["batch_stats"]))(params, generated, x)
  ref = _ref_block(params, generated, x, mode, stats)
  assert y.shape == ref.shape == x.shape
  np.testing.assert_allclose(y, ref, rtol=0, atol=TOL * float(np.abs(ref).max()))
  # the options reach the norms: the other bn_stats / norm_mode gives another block
  other = _ref_block(params, generated, x, mode, "group" if stats == "global" else "global")
  assert float(np.abs(other - ref).max()) > 1e-3
