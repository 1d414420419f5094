"""MobileNetV3: shapes, grouping, timm-exact structure and parameter counts, timm conversion."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encoder_fakes import abstract_variables, count, tiny_encoder
from flax import traverse_util

from hyperclip_jax.models import build_image_encoder, mobilenetv3
from hyperclip_jax.models.convert_timm import _from_timm_mobilenetv3, from_timm
from hyperclip_jax.models.layers import count_generated

NAME = "mobilenetv3_small_100"
TINY = dict(width_mult=0.25, depth_mult=0.5, head_features=32)  # 7 blocks, 8-16 channels


@pytest.fixture(scope="module")
def tiny():
  return tiny_encoder(NAME, TINY)


@pytest.fixture(scope="module")
def apply(tiny):
  return jax.jit(tiny[0].apply)


@pytest.mark.parametrize("name,expected", [
    ("mobilenetv3_large_100", 4_202_032),  # timm 5,483,032 total - classifier 1280*1000 + 1000
    ("mobilenetv3_small_100", 1_517_856),  # timm 2,542,856 total - classifier 1024*1000 + 1000
])
def test_param_count_equals_timm_without_classifier(name, expected):
  assert count(abstract_variables(name)["params"]) == expected


@pytest.mark.parametrize("name,expected", [
    # BatchNorm channels summed by hand from the arch tables (stem, every block's norms, the 960/576 conv),
    # times 2 (scale and bias): large 12,200 channels, small 6,056.
    ("mobilenetv3_large_100", 24_400),
    ("mobilenetv3_small_100", 12_112),
])
def test_generated_template_counts_every_batchnorm_channel(name, expected):
  assert count_generated(abstract_variables(name)["generated"]) == expected


def test_large_block_table_matches_timm():
  stem, stages = mobilenetv3.build_blocks("large")
  assert stem == 16
  assert [len(s) for s in stages] == [1, 2, 3, 4, 2, 3, 1]
  assert [s[-1].out for s in stages] == [16, 24, 40, 80, 112, 160, 960]
  assert [b.mid for b in stages[3]] == [240, 200, 184, 184]  # make_divisible(80 * 2.3) = 184
  assert [b.se_reduce for b in stages[2]] == [24, 32, 32]  # make_divisible(72/4) = 24, (120/4) = 32
  assert [b.stride for s in stages for b in s].count(2) == 4  # plus the stem: output stride 32
  assert [b.act for b in stages[2]] == ["relu"] * 3 and stages[3][0].act == "hard_swish"


def test_small_block_table_matches_timm():
  stem, stages = mobilenetv3.build_blocks("small")
  assert [len(s) for s in stages] == [1, 2, 3, 2, 3, 1]
  assert [b.mid for b in stages[1]] == [72, 88]  # 16 * 4.5, make_divisible(24 * 3.67)
  assert stages[0][0].se_reduce == 8 and stages[0][0].stride == 2


def test_depth_mult_follows_timm_ceil_rule():
  assert mobilenetv3.scale_repeats([1, 1, 2], 1.0) == [1, 1, 2]
  assert mobilenetv3.scale_repeats([1, 1, 2], 0.5) == [1, 1, 1]
  assert mobilenetv3.scale_repeats([3], 0.5) == [2]
  assert mobilenetv3.scale_repeats([1, 1, 2], 2.0) == [2, 2, 4]


def test_width_mult_below_075_keeps_stem_at_16():
  assert mobilenetv3.build_blocks("small", 0.5)[0] == 16
  assert mobilenetv3.build_blocks("small", 1.25)[0] == 24


def test_output_shapes_ungrouped_and_grouped(tiny, apply):
  model, variables, images = tiny
  out = apply(variables, images)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  grouped = jnp.stack([images, images[::-1]])  # [G=2, S=2, 32, 32, 3]
  out_g = apply(variables, grouped)
  assert out_g.shape == (2, 2, 32)
  np.testing.assert_allclose(out_g[0], out, rtol=1e-5, atol=1e-6)  # eval mode: grouping changes nothing
  np.testing.assert_allclose(out_g[1], out[::-1], rtol=1e-5, atol=1e-6)


def test_per_group_generated_params_equal_separate_runs(tiny, apply):
  model, variables, images = tiny
  gen = variables["generated"]
  keys = iter(jax.random.split(jax.random.PRNGKey(2), len(jax.tree_util.tree_leaves(gen))))
  per_group = jax.tree_util.tree_map(lambda z: 0.3 * jax.random.normal(next(keys), (2,) + z.shape), gen)
  base = {k: v for k, v in variables.items() if k != "generated"}
  out_g = apply({**base, "generated": per_group}, jnp.stack([images, images]))
  for g in range(2):
    one = jax.tree_util.tree_map(lambda x: x[g], per_group)
    np.testing.assert_allclose(out_g[g], apply({**base, "generated": one}, images), rtol=1e-4, atol=1e-5)
  assert not np.allclose(out_g[0], out_g[1])


def test_train_mode_updates_batch_stats_with_drop_path(tiny):
  _, variables, images = tiny
  model = build_image_encoder(NAME, **TINY, drop_path_rate=0.2)
  train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  out, updates = train_apply(variables, images, rngs={"dropout": jax.random.PRNGKey(3)})
  assert out.shape == (2, 32) and bool(jnp.all(jnp.isfinite(out)))
  before, after = variables["batch_stats"]["bn1"]["mean"], updates["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(before, after)


def _to_timm(variables):
  """Inverse of the conversion: our variables -> a timm-style state dict (numpy, torch layouts)."""
  leaf_names = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
                ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
  sd = {}
  for col in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(variables[col]).items():
      mods = [m.replace("_", ".") if m.startswith("blocks_") else m for m in path[:-1]]
      value = np.asarray(value)
      if path[-1] == "kernel":
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      sd[".".join(mods + [leaf_names[(col, path[-1])]])] = value
      if path[-1] == "var":
        sd[".".join(mods + ["num_batches_tracked"])] = np.array(7)
  sd["classifier.weight"] = np.zeros((1000, 32), np.float32)
  sd["classifier.bias"] = np.zeros((1000,), np.float32)
  return sd


def test_from_timm_round_trip_restores_variables_and_outputs(tiny, apply):
  model, variables, images = tiny
  sd = _to_timm(variables)
  assert "blocks.0.0.se.conv_reduce.weight" in sd and "blocks.5.0.conv.weight" in sd and "conv_head.bias" in sd
  converted = _from_timm_mobilenetv3(NAME, sd, **TINY)
  assert set(converted) == {"params", "batch_stats"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted["params"], jax.device_get(variables["params"]))
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted["batch_stats"],
                         jax.device_get(variables["batch_stats"]))
  np.testing.assert_array_equal(apply(converted, images), apply(variables, images))


def test_from_timm_full_size_names_match_timm_state_dict():
  shapes = abstract_variables("mobilenetv3_large_100")
  sd = _to_timm(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes))
  # entries and shapes of timm's mobilenetv3_large_100 state dict
  assert sd["conv_stem.weight"].shape == (16, 3, 3, 3)
  assert sd["blocks.0.0.conv_dw.weight"].shape == (16, 1, 3, 3)
  assert sd["blocks.2.0.se.conv_reduce.weight"].shape == (24, 72, 1, 1)
  assert sd["blocks.5.2.conv_pwl.weight"].shape == (160, 960, 1, 1)
  assert sd["blocks.6.0.conv.weight"].shape == (960, 160, 1, 1)
  assert sd["blocks.6.0.bn1.running_var"].shape == (960,)
  assert sd["conv_head.weight"].shape == (1280, 960, 1, 1) and sd["conv_head.bias"].shape == (1280,)
  out = from_timm("mobilenetv3_large_100", sd)
  assert count(out["params"]) == 4_202_032


def test_from_timm_names_missing_unexpected_and_misshapen_keys(tiny):
  _, variables, _ = tiny
  sd = _to_timm(variables)
  missing = dict(sd)
  del missing["blocks.1.0.bn2.running_mean"]
  with pytest.raises(ValueError, match="blocks.1.0.bn2.running_mean"):
    _from_timm_mobilenetv3(NAME, missing, **TINY)
  with pytest.raises(ValueError, match="blocks.9.9.conv.weight"):
    _from_timm_mobilenetv3(NAME, {**sd, "blocks.9.9.conv.weight": np.zeros((1,))}, **TINY)
  bad = {**sd, "conv_stem.weight": np.zeros((16, 3, 5, 5), np.float32)}
  with pytest.raises(ValueError, match="conv_stem.weight"):
    _from_timm_mobilenetv3(NAME, bad, **TINY)


def test_bad_inputs_raise_clear_errors(tiny):
  model, variables, _ = tiny
  with pytest.raises(ValueError, match="at least 32x32"):
    model.apply(variables, jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match="3 channels"):
    model.apply(variables, jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="images must be"):
    model.apply(variables, jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="width_mult"):
    jax.eval_shape(build_image_encoder(NAME, width_mult=0.0).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 32, 32, 3)))
  assert (model.default_size, model.min_size) == (224, 32)
