"""EfficientNet / TinyNet: shapes, timm-exact sizes, per-group BatchNorm, and the timm conversion."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax.models import build_image_encoder, efficientnet
from hyperclip_jax.models.convert_timm import from_timm
from hyperclip_jax.models.layers import count_generated, make_divisible

TINY = dict(width_mult=0.25, depth_mult=0.34)

# timm 1.0.29: sum(p.numel() for name, p in timm.create_model(name).named_parameters()
#                  if not name.startswith('classifier')), and pretrained_cfg['input_size'][-1].
TIMM_PARAMS = {
    "efficientnet_b0": (4_007_548, 224), "efficientnet_b1": (6_513_184, 240),
    "efficientnet_b2": (7_700_994, 256), "tinynet_a": (4_906_972, 192), "tinynet_b": (2_449_562, 188),
    "tinynet_c": (1_176_234, 184), "tinynet_d": (1_057_446, 152), "tinynet_e": (761_972, 106),
}


def _abstract_init(model):
  images = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))


def _images(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _host_init(model, seed=0, groups=None):
  """Variables for `model` drawn with numpy from its abstract init: compiling the real init (its RNG) takes
  10-25 s on CPU, more than all the applies below. He-normal kernels, fresh BatchNorm, zero generated
  leaves ([groups, C] when `groups` is given)."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    collection, name = path[0].key, path[-1].key
    if collection == "generated":
      return np.zeros(s.shape if groups is None else (groups,) + s.shape, np.float32)
    if name == "kernel":
      return (rng.standard_normal(s.shape) * np.sqrt(2.0 / math.prod(s.shape[:-1]))).astype(np.float32)
    return np.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, _abstract_init(model))


class _Tiny:
  """A tiny efficientnet_b0 (width 0.25, depth 0.34) and its jitted eval / train applies."""

  def __init__(self, **overrides):
    self.model = build_image_encoder("efficientnet_b0", **TINY, **overrides)
    self.variables = _host_init(self.model)  # generated leaves [C]
    self.grouped_variables = _host_init(self.model, groups=2)  # generated leaves [2, C]
    self.eval = jax.jit(lambda v, x: self.model.apply(v, x, train=False))
    self.train = jax.jit(lambda v, x, rng: self.model.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}))


@pytest.fixture(scope="module")
def tiny():
  return _Tiny()


def test_tiny_b0_pools_flat_and_grouped_images(tiny):
  width = make_divisible(1280 * 0.25, 8)  # 320
  x = _images(1, (2, 2, 32, 32, 3))
  flat = tiny.eval(tiny.variables, x[0])
  grouped = tiny.eval(tiny.variables, x)
  assert flat.shape == (2, width) and flat.dtype == jnp.float32
  assert grouped.shape == (2, 2, width)
  np.testing.assert_allclose(np.asarray(grouped[0]), np.asarray(flat), rtol=1e-5, atol=1e-6)


def test_block_init_uses_timms_fan_out_rule():
  # timm: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups -> k*k for a depthwise conv.
  spec = efficientnet.BlockSpec("ir", 32, 32, 192, 8, 5, 1, 0.0)
  block = efficientnet.MBConvBlock(spec)
  init = jax.jit(lambda x: block.init(jax.random.PRNGKey(0), x))
  params = init(jnp.zeros((1, 1, 8, 8, 32)))["params"]
  assert params["conv_dw"]["kernel"].shape == (5, 5, 1, 192)
  np.testing.assert_allclose(float(params["conv_dw"]["kernel"].std()), math.sqrt(2 / 25), rtol=0.05)
  np.testing.assert_allclose(float(params["conv_pw"]["kernel"].std()), math.sqrt(2 / 192), rtol=0.05)
  np.testing.assert_allclose(float(params["conv_pwl"]["kernel"].std()), math.sqrt(2 / 32), rtol=0.05)
  assert set(params["se"]) == {"conv_reduce", "conv_expand"} and params["se"]["conv_reduce"]["bias"].shape == (8,)


def test_b0_has_the_standard_49_norm_layers_and_42016_generated_values():
  generated = _abstract_init(build_image_encoder("efficientnet_b0"))["generated"]
  # EfficientNet-B0 (Tan & Le 2019, table 1) widths: stem 32; DS block 32 -> 16; each MBConv block has
  # BN(expanded), BN(expanded), BN(out) with expanded = 6 x input; head 1280.
  stages = [(24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)]
  want = {("stem", "bn"): 32, ("blocks_0_0", "bn1"): 32, ("blocks_0_0", "bn2"): 16, ("head", "bn"): 1280}
  cin = 16
  for i, (cout, depth) in enumerate(stages, start=1):
    for j in range(depth):
      want[(f"blocks_{i}_{j}", "bn1")] = want[(f"blocks_{i}_{j}", "bn2")] = 6 * cin
      want[(f"blocks_{i}_{j}", "bn3")] = cin = cout
  got = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(generated)[0]:
    names = tuple(k.key for k in path)
    assert names[-1] in ("scale", "bias") and leaf.shape == (leaf.shape[0],)
    got[names[:-1]] = leaf.shape[0]
  assert got == want
  assert len(got) == 49 and sum(got.values()) == 21_008
  assert len(jax.tree_util.tree_leaves(generated)) == 98
  assert count_generated(generated) == 42_016


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_param_count_and_default_size_equal_timm(name):
  model = build_image_encoder(name)
  params = _abstract_init(model)["params"]
  assert sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)) == TIMM_PARAMS[name][0]
  assert model.default_size == TIMM_PARAMS[name][1] and model.min_size == 32


def test_tinynet_keeps_a_32_channel_stem_and_1280_head_and_rounds_depth():
  stem, stages, head = efficientnet.build_arch(0.51, 0.6, "tinynet")  # tinynet_e
  assert (stem, head) == (32, 1280)
  assert [len(s) for s in stages] == [1, 1, 1, 2, 2, 2, 1]  # timm: round(repeats x 0.6), at least 1
  _, b1_stages, _ = efficientnet.build_arch(1.0, 1.1, "efficientnet")  # efficientnet_b1: ceil
  assert [len(s) for s in b1_stages] == [2, 3, 3, 4, 4, 5, 2]


def test_drop_path_rate_grows_linearly_by_block_index():
  _, stages, _ = efficientnet.build_arch(1.0, 1.0, "efficientnet", drop_path_rate=0.2)
  rates = [b.drop_path for s in stages for b in s]
  np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])
  assert [b.has_skip for b in stages[1]] == [False, True]  # stride 2 / channel change: no residual


# ---- BatchNorm per group, generated affine ---------------------------------------------------------------


def _same_image_different_companions(seed):
  a, b, c = _images(seed, (3, 32, 32, 3))
  return jnp.stack([jnp.stack([a, b]), jnp.stack([a, c])])  # [G=2, S=2, 32, 32, 3]


def test_train_mode_normalises_each_group_with_its_own_statistics(tiny):
  x = _same_image_different_companions(4)
  v = tiny.grouped_variables
  out, updates = tiny.train(v, x, jax.random.PRNGKey(0))
  alone, _ = tiny.train(v, jnp.stack([x[0], x[0]]), jax.random.PRNGKey(0))
  assert float(jnp.abs(out[0, 0] - out[1, 0]).max()) > 0.05  # image a's features depend on its group
  # ...and only on its own group: group 0 computes the same whatever group 1 holds (BN over 2 images
  # at 1x1 resolution amplifies rounding, hence the tolerance).
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(alone[0]), atol=2e-3)
  before = v["batch_stats"]["head"]["bn"]["mean"]
  assert float(jnp.abs(updates["batch_stats"]["head"]["bn"]["mean"] - before).max()) > 0


def test_eval_mode_ignores_batch_companions(tiny):
  out = tiny.eval(tiny.variables, _same_image_different_companions(5))
  np.testing.assert_allclose(np.asarray(out[0, 0]), np.asarray(out[1, 0]), rtol=1e-5, atol=1e-7)


def test_generated_affine_applies_per_group(tiny):
  x = _images(7, (2, 2, 32, 32, 3))
  v = tiny.grouped_variables
  base, _ = tiny.train(v, x, jax.random.PRNGKey(0))
  # Group 0 keeps Δ = 0, group 1 gets a Δscale on the head norm: only group 1 changes.
  gen = jax.tree_util.tree_map(jnp.asarray, v["generated"])
  gen["head"]["bn"]["scale"] = gen["head"]["bn"]["scale"].at[1].set(0.5)
  out, _ = tiny.train({**v, "generated": gen}, x, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(base[0]), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out[1] - base[1]).max()) > 0.05


def test_drop_path_draws_from_the_dropout_rng_in_training():
  net = _Tiny(drop_path_rate=0.5)
  x = _images(8, (2, 2, 32, 32, 3))
  run = lambda seed: np.asarray(net.train(net.grouped_variables, x, jax.random.PRNGKey(seed))[0])
  np.testing.assert_array_equal(run(0), run(0))
  assert float(np.abs(run(0) - run(1)).max()) > 1e-3


def test_bad_factory_arguments_and_images_raise_value_error():
  with pytest.raises(ValueError, match="unknown override"):
    build_image_encoder("efficientnet_b0", widht_mult=0.5)
  with pytest.raises(ValueError, match="norm_mode"):
    build_image_encoder("efficientnet_b0", norm_mode="add")
  with pytest.raises(ValueError, match="drop_path_rate"):
    build_image_encoder("efficientnet_b0", drop_path_rate=1.5)
  model = build_image_encoder("tinynet_e", **TINY)
  with pytest.raises(ValueError, match="at least 32x32"):
    _ = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))


# ---- timm conversion -------------------------------------------------------------------------------------

# Written independently of convert_timm: our variable path -> timm state-dict key, and the layout change.
_STEM_HEAD = {("stem", "conv"): "conv_stem", ("stem", "bn"): "bn1", ("head", "conv"): "conv_head",
              ("head", "bn"): "bn2"}
_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
         ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _to_timm(variables):
  """Our {'params', 'batch_stats'} -> a timm-style state dict (torch layouts), plus the extras timm has."""
  sd = {}
  for collection in ("params", "batch_stats"):
    for path, value in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
      names = tuple(k.key for k in path)
      module = _STEM_HEAD.get(names[:2])
      if module is None:
        _, stage, block = names[0].split("_")
        module = ".".join(["blocks", stage, block] + list(names[1:-1]))
      value = np.asarray(value)
      if names[-1] == "kernel":
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      sd[f"{module}.{_LEAF[(collection, names[-1])]}"] = value
      if names[-1] == "var":
        sd[f"{module}.num_batches_tracked"] = np.array(7)
  sd["classifier.weight"] = np.zeros((1000, 1280), np.float32)
  sd["classifier.bias"] = np.zeros((1000,), np.float32)
  return sd


@pytest.fixture(scope="module")
def b0_random():
  """Random values with efficientnet_b0's variable shapes (no compute), and the matching timm state dict."""
  shapes = _abstract_init(build_image_encoder("efficientnet_b0"))
  rng = np.random.default_rng(0)
  variables = {c: jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes[c])
               for c in ("params", "batch_stats")}
  return variables, _to_timm(variables)


def test_from_timm_reproduces_our_variables(b0_random):
  variables, sd = b0_random
  assert len([k for k in sd if not k.startswith("classifier")]) == 360 - 2  # timm b0 state dict entries
  got = from_timm("efficientnet_b0", sd)
  assert set(got) == {"params", "batch_stats"}
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(variables)
  for want_leaf, got_leaf in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(got_leaf, want_leaf)


def test_from_timm_names_the_missing_unexpected_or_misshaped_entry(b0_random):
  _, sd = b0_random
  missing = {k: v for k, v in sd.items() if k != "blocks.2.1.se.conv_reduce.bias"}
  with pytest.raises(ValueError, match=r"no entry 'blocks\.2\.1\.se\.conv_reduce\.bias'"):
    from_timm("efficientnet_b0", missing)
  with pytest.raises(ValueError, match=r"unexpected state dict entries blocks\.6\.1\.conv_pw\.weight"):
    from_timm("efficientnet_b0", {**sd, "blocks.6.1.conv_pw.weight": np.zeros((1, 1, 1, 1))})
  bad = {**sd, "conv_head.weight": np.zeros((1280, 300, 1, 1), np.float32)}
  with pytest.raises(ValueError, match=r"'conv_head\.weight' has shape \(1280, 300, 1, 1\).*\(1, 1, 320, 1280\)"):
    from_timm("efficientnet_b0", bad)
  with pytest.raises(ValueError, match="no timm conversion"):
    from_timm("resnet50", sd)
