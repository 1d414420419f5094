"""Text tower: shapes, masking (causal, padding), pooling, presets and input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax.models.text import TEXT_PRESETS, TextTransformer, build_text_tower

VOCAB, MAX_LEN = 50, 16


def _tower(**kw):
  args = dict(vocab_size=VOCAB, width=32, depth=2, heads=2, mlp_dim=64, max_len=MAX_LEN, causal=True,
              pool="eot", out_dim=24)
  args.update(kw)
  return TextTransformer(**args)


def _apply(model, params, tokens):
  return jax.jit(model.apply)(params, tokens)


def _tokens(rows, length):
  """Right-pads each row of ids with pad 0 to `length`."""
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return jnp.asarray(out)


ROWS = [[5, 7, 9, 3], [11, 2], [4, 8, 12, 6, 10, 1, 13]]


@pytest.fixture(scope="module")
def params():
  """One set of parameters for every pool/causal choice: they differ only by 'map_head', included here."""
  return jax.jit(_tower(pool="map").init)(jax.random.PRNGKey(0), _tokens(ROWS, 8))


@pytest.mark.parametrize("pool", ["eot", "last", "first", "map"])
def test_output_shape(params, pool):
  tokens = _tokens(ROWS, 10)
  out = _apply(_tower(pool=pool), params, tokens)
  assert out.shape == (3, 24) and out.dtype == jnp.float32


def test_no_projection_when_out_dim_is_none():
  tokens = _tokens(ROWS, 10)
  bare = _tower(out_dim=None, depth=1)
  variables = jax.jit(bare.init)(jax.random.PRNGKey(0), tokens)
  assert "proj" not in variables["params"] and "map_head" not in variables["params"]
  assert _apply(bare, variables, tokens).shape == (3, 32)


def _final_features(model, params, tokens):
  _, state = jax.jit(lambda p, t: model.apply(p, t, capture_intermediates=True))(params, tokens)
  return state["intermediates"]["ln_final"]["__call__"][0]  # [B, L, W]


def test_causal_positions_ignore_later_tokens(params):
  a = jnp.asarray([[5, 7, 9, 3, 8, 2]], jnp.int32)
  b = a.at[0, 3:].set(jnp.asarray([14, 15, 16]))  # change positions 3..5
  for causal in (True, False):
    model = _tower(causal=causal)
    fa, fb = _final_features(model, params, a), _final_features(model, params, b)
    same_prefix = np.allclose(fa[0, :3], fb[0, :3], atol=1e-6)
    assert same_prefix == causal  # bidirectional: earlier positions do see the later tokens


def test_causal_eot_equals_last_of_truncated_text(params):
  """With causal attention the 'eot' output depends only on tokens up to the EOT token."""
  model = _tower(causal=True, pool="eot")
  tokens = _tokens(ROWS, 12)
  out = _apply(model, params, tokens)
  last = _tower(causal=True, pool="last")
  for i, row in enumerate(ROWS):
    alone = _apply(last, params, jnp.asarray([row], jnp.int32))
    np.testing.assert_allclose(out[i], alone[0], atol=1e-5)


@pytest.mark.parametrize("pool,causal", [("eot", True), ("eot", False), ("map", False), ("map", True),
                                         ("first", False)])
def test_appending_pad_tokens_changes_nothing(params, pool, causal):
  model = _tower(pool=pool, causal=causal)
  short, long = _tokens(ROWS, 8), _tokens(ROWS, MAX_LEN)
  np.testing.assert_allclose(_apply(model, params, short), _apply(model, params, long), atol=1e-5)


def test_pooled_rows_differ_for_different_texts(params):
  model = _tower()
  tokens = _tokens(ROWS, 8)
  out = _apply(model, params, tokens)
  assert np.abs(out[0] - out[1]).max() > 1e-3


@pytest.mark.parametrize("pool,causal", [("eot", True), ("last", False), ("first", True), ("map", False)])
def test_all_pad_row_is_finite(params, pool, causal):
  model = _tower(pool=pool, causal=causal)
  tokens = _tokens([[5, 7, 9], []], 6)
  out = _apply(model, params, tokens)
  assert np.isfinite(np.asarray(out)).all()
  grads = jax.jit(jax.grad(lambda p: model.apply(p, tokens).sum()))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_longer_than_max_len_is_an_error(params):
  model = _tower()
  with pytest.raises(ValueError, match="max_len=16"):
    model.apply(params, _tokens(ROWS, MAX_LEN + 1))


def test_bad_inputs_are_errors():
  model = _tower()
  with pytest.raises(ValueError, match="integer ids"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 4), jnp.float32))
  with pytest.raises(ValueError, match="pool 'cls' is unknown"):
    _tower(pool="cls").init(jax.random.PRNGKey(0), _tokens(ROWS, 8))


def test_presets_and_builder():
  assert TEXT_PRESETS["paper"]["width"] == 768 and TEXT_PRESETS["paper"]["mlp_dim"] == 2560
  assert TEXT_PRESETS["paper"]["heads"] == 8 and TEXT_PRESETS["paper"]["causal"]
  assert TEXT_PRESETS["siglip_b"]["pool"] == "last" and not TEXT_PRESETS["siglip_b"]["causal"]
  tower = build_text_tower("tiny", vocab_size=300, out_dim=16)
  assert (tower.width, tower.depth, tower.heads, tower.mlp_dim, tower.vocab_size) == (64, 2, 2, 128, 300)
  assert build_text_tower().width == 768 and build_text_tower().depth == 12
  tokens = _tokens(ROWS, 8)
  out = jax.eval_shape(lambda: tower.apply(tower.init(jax.random.PRNGKey(0), tokens), tokens))
  assert out.shape == (3, 16)
  with pytest.raises(ValueError, match="preset 'huge' is unknown"):
    build_text_tower("huge")
  with pytest.raises(ValueError, match="widht"):
    build_text_tower("tiny", widht=3)


def test_paper_preset_shapes_without_compute():
  tower = build_text_tower("paper", out_dim=512)
  shapes = jax.eval_shape(tower.init, jax.random.PRNGKey(0), jnp.zeros((2, 77), jnp.int32))
  p = shapes["params"]
  assert p["token_embed"]["embedding"].shape == (49408, 768)
  assert p["pos_embed"].shape == (77, 768)
  assert p["block_11"]["mlp"]["fc1"]["kernel"].shape == (768, 2560)
  assert p["proj"]["kernel"].shape == (768, 512)
