"""ViT: shapes, grouping, timm-exact parameter counts, position-embedding resampling, timm conversion."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encoder_fakes import abstract_variables, count, tiny_encoder
from flax import traverse_util

from hyperclip_jax.models import build_image_encoder, vit
from hyperclip_jax.models.convert_timm import _from_timm_vit, from_timm
from hyperclip_jax.models.layers import count_generated

NAME = "vit_tiny_patch16_224"
TINY = dict(width=32, heads=2, depth=2, mlp_dim=64, patch_size=8, image_size=32)  # 4x4 patch grid


@pytest.fixture(scope="module")
def tiny():
  return tiny_encoder(NAME, TINY)


@pytest.fixture(scope="module")
def apply(tiny):
  return jax.jit(tiny[0].apply)


@pytest.mark.parametrize("name,expected", [
    ("vit_tiny_patch16_224", 5_524_416),  # timm 5,717,416 total - head 192*1000 + 1000
    ("vit_small_patch16_224", 21_665_664),  # timm 22,050,664 total - head 384*1000 + 1000
    ("vit_base_patch16_224", 85_798_656),  # timm 86,567,656 total - head 768*1000 + 1000
])
def test_param_count_equals_timm_without_head(name, expected):
  assert count(abstract_variables(name)["params"]) == expected


def test_generated_template_covers_every_layernorm():
  # 2 LayerNorms per block + the final one, scale and bias each: (2 * 12 + 1) * 2 * 768
  assert count_generated(abstract_variables("vit_base_patch16_224")["generated"]) == 38_400


def test_width_and_depth_mult_scale_heads_and_blocks():
  model = vit.MODELS["vit_base_patch16_224"](width_mult=0.25, depth_mult=0.5)
  assert (model.width, model.heads, model.depth, model.mlp_dim) == (192, 3, 6, 768)  # head dim stays 64


def test_output_shapes_ungrouped_and_grouped(tiny, apply):
  model, variables, images = tiny
  out = apply(variables, images)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  out_g = apply(variables, jnp.stack([images, images[::-1]]))  # [G=2, S=2, 32, 32, 3]
  assert out_g.shape == (2, 2, 32)
  np.testing.assert_allclose(out_g[0], out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_g[1], out[::-1], rtol=1e-5, atol=1e-5)


def test_per_group_generated_layernorm_params_equal_separate_runs(tiny, apply):
  model, variables, images = tiny
  gen = variables["generated"]
  keys = iter(jax.random.split(jax.random.PRNGKey(2), len(jax.tree_util.tree_leaves(gen))))
  per_group = jax.tree_util.tree_map(lambda z: 0.3 * jax.random.normal(next(keys), (2,) + z.shape), gen)
  base = {"params": variables["params"]}
  out_g = apply({**base, "generated": per_group}, jnp.stack([images, images]))
  for g in range(2):
    one = jax.tree_util.tree_map(lambda x: x[g], per_group)
    np.testing.assert_allclose(out_g[g], apply({**base, "generated": one}, images), rtol=1e-4, atol=1e-5)
  assert not np.allclose(out_g[0], out_g[1])


def test_pos_embed_resampling_keeps_native_grid_and_class_token():
  pos = jnp.asarray(np.random.default_rng(0).normal(size=(1 + 16, 8)), jnp.float32)
  np.testing.assert_array_equal(vit.resample_pos_embed(pos, (4, 4), (4, 4)), pos)
  up = vit.resample_pos_embed(pos, (4, 4), (6, 5))
  assert up.shape == (1 + 30, 8)
  np.testing.assert_array_equal(up[0], pos[0])
  flat = jnp.concatenate([pos[:1], jnp.tile(pos[1:2], (16, 1))])  # a constant grid stays constant
  np.testing.assert_allclose(vit.resample_pos_embed(flat, (4, 4), (7, 3))[1:], jnp.tile(pos[1:2], (21, 1)),
                             rtol=1e-6)
  down = vit.resample_pos_embed(pos, (4, 4), (2, 2))
  assert down.shape == (5, 8)


def test_non_native_input_size_runs_with_resampled_embeddings(tiny):
  model, variables, _ = tiny
  out = model.apply(variables, jnp.zeros((2, 48, 40, 3)))  # 6x5 patch grid vs the native 4x4
  assert out.shape == (2, 32) and bool(jnp.all(jnp.isfinite(out)))


def _to_timm(params):
  """Inverse of the conversion: our params -> a timm-style state dict (numpy, torch layouts)."""
  sd = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value)
    mods, leaf = list(path[:-1]), path[-1]
    if mods == ["patch_embed"]:
      mods = ["patch_embed", "proj"]
    mods = [m.replace("_", ".") if m.startswith("blocks_") else m for m in mods]
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    name = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    sd[".".join(mods + [name])] = value
  sd["head.weight"] = np.zeros((1000, params["norm"]["scale"].shape[0]), np.float32)
  sd["head.bias"] = np.zeros((1000,), np.float32)
  return sd


def _timm_forward(sd, images, heads, patch, eps=1e-6):
  """timm's VisionTransformer.forward_head(forward_features(x), pre_logits=True), in numpy from a state dict."""
  ln = lambda x, p: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * sd[
      p + ".weight"] + sd[p + ".bias"]
  lin = lambda x, p: x @ sd[p + ".weight"].T + sd[p + ".bias"]
  b, h, w, _ = images.shape
  x = images.transpose(0, 3, 1, 2).reshape(b, 3, h // patch, patch, w // patch, patch)
  x = np.einsum("bciujv,dcuv->bijd", x, sd["patch_embed.proj.weight"]) + sd["patch_embed.proj.bias"]
  x = x.reshape(b, -1, x.shape[-1])
  x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, x.shape[-1])), x], 1) + sd["pos_embed"]
  n, d = x.shape[1], x.shape[2]
  erf = np.vectorize(math.erf)
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    p = f"blocks.{i}."
    qkv = lin(ln(x, p + "norm1"), p + "attn.qkv").reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv  # [B, H, N, hd]
    a = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    a = np.exp(a - a.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    x = x + lin((a @ v).transpose(0, 2, 1, 3).reshape(b, n, d), p + "attn.proj")
    y = lin(ln(x, p + "norm2"), p + "mlp.fc1")
    x = x + lin(0.5 * y * (1 + erf(y / math.sqrt(2))), p + "mlp.fc2")
    i += 1
  return ln(x, "norm")[:, 0]


def test_from_timm_round_trip_matches_a_numpy_timm_forward(tiny, apply):
  model, variables, images = tiny
  sd = _to_timm(variables["params"])
  assert sd["cls_token"].shape == (1, 1, 32) and sd["pos_embed"].shape == (1, 17, 32)
  converted = _from_timm_vit(NAME, sd, **TINY)
  assert set(converted) == {"params"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted["params"], jax.device_get(variables["params"]))
  ref = _timm_forward({k: v.astype(np.float64) for k, v in sd.items()}, np.asarray(images, np.float64), 2, 8)
  np.testing.assert_allclose(apply(converted, images), ref, rtol=1e-4, atol=1e-4)


def test_from_timm_full_size_names_match_timm_state_dict():
  sd = _to_timm(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32),
                                       abstract_variables("vit_base_patch16_224")["params"]))
  # entries and shapes of timm's vit_base_patch16_224 state dict
  assert sd["cls_token"].shape == (1, 1, 768) and sd["pos_embed"].shape == (1, 197, 768)
  assert sd["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
  assert sd["blocks.11.attn.qkv.weight"].shape == (2304, 768) and sd["blocks.11.attn.qkv.bias"].shape == (2304,)
  assert sd["blocks.0.mlp.fc1.weight"].shape == (3072, 768) and sd["norm.weight"].shape == (768,)
  assert count(from_timm("vit_base_patch16_224", sd)["params"]) == 85_798_656


def test_from_timm_names_missing_unexpected_and_misshapen_keys(tiny):
  sd = _to_timm(tiny[1]["params"])
  missing = dict(sd)
  del missing["blocks.1.attn.proj.bias"]
  with pytest.raises(ValueError, match="blocks.1.attn.proj.bias"):
    _from_timm_vit(NAME, missing, **TINY)
  with pytest.raises(ValueError, match="reg_token"):
    _from_timm_vit(NAME, {**sd, "reg_token": np.zeros((1, 4, 32), np.float32)}, **TINY)
  with pytest.raises(ValueError, match="pos_embed"):
    _from_timm_vit(NAME, {**sd, "pos_embed": np.zeros((1, 37, 32), np.float32)}, **TINY)


def test_bad_inputs_raise_clear_errors(tiny):
  model, variables, _ = tiny
  assert (model.default_size, model.min_size) == (32, 8)
  with pytest.raises(ValueError, match="multiple of the patch size 8"):
    model.apply(variables, jnp.zeros((2, 36, 32, 3)))
  with pytest.raises(ValueError, match="at least 8x8"):
    model.apply(variables, jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(ValueError, match="not divisible by heads"):
    jax.eval_shape(build_image_encoder(NAME, width=30, heads=4).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 224, 224, 3)))
  assert (build_image_encoder(NAME).default_size, build_image_encoder(NAME).min_size) == (224, 16)
  assert build_image_encoder(NAME, bn_stats="group").default_size == 224  # the CNN configs' default key
  with pytest.raises(ValueError, match="does not apply to a ViT"):
    build_image_encoder(NAME, bn_stats="global")
