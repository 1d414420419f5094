"""Preprocessing ops: the string syntax, each op's output, and errors that list ops and signatures."""
import io

import numpy as np
import pytest
from conftest import jpeg
from PIL import Image

from hyperclip_jax.data import pp
from hyperclip_jax.data.bad_data import BadSample
from hyperclip_jax.data.tokenizers import get_tokenizer


def _png(h, w, value=200):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _run(spec, example, seed=0, **kw):
  return pp.build(spec, **kw)(example, np.random.default_rng(seed))


def test_default_train_chain_gives_model_inputs():
  tok = get_tokenizer("bytes")
  out = _run("decode|resize(24)|value_range(-1, 1)|tokenize|keep('image', 'text')",
             {"image": jpeg(3, size=40), "caption": "a cat", "key": "k"}, tokenizer=tok, max_len=8)
  assert set(out) == {"image", "text"}
  assert out["image"].shape == (24, 24, 3) and out["image"].dtype == np.float32
  assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
  np.testing.assert_array_equal(out["text"], tok.encode(["a cat"], 8)[0])


@pytest.mark.parametrize("spec, shape", [
    ("decode|resize((10, 20))", (10, 20, 3)),
    ("decode|resize_small(12)", (12, 24, 3)),
    ("decode|resize_small(12)|central_crop(12)", (12, 12, 3)),
    ("decode|random_crop((5, 7))", (5, 7, 3)),
    ("decode|inception_crop(9)", (9, 9, 3)),
    ("decode|inception_crop(size=9, area_min=50)|flip_lr", (9, 9, 3)),
])
def test_geometry_ops_give_the_asked_shapes(spec, shape):
  out = _run(spec, {"image": _png(30, 60)})
  assert out["image"].shape == shape and out["image"].dtype == np.uint8


def test_random_ops_depend_only_on_the_rng():
  image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
  data = io.BytesIO()
  Image.fromarray(image).save(data, format="PNG")
  spec = "decode|inception_crop(16)|flip_lr|random_crop(8)"
  a, b, c = (_run(spec, {"image": data.getvalue()}, seed=s)["image"] for s in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  flipped = [_run("decode|flip_lr", {"image": data.getvalue()}, seed=s)["image"] for s in range(8)]
  assert any(np.array_equal(f, image[:, ::-1]) for f in flipped) and any(np.array_equal(f, image) for f in flipped)


def test_value_range_keep_and_rename():
  out = _run("value_range(0, 1)|rename(caption='texts')", {"image": np.full((2, 2, 3), 255, np.uint8),
                                                             "caption": "x"})
  np.testing.assert_allclose(out["image"], 1.0)
  assert out["texts"] == "x" and "caption" not in out


def test_bad_images_raise_bad_sample():
  with pytest.raises(BadSample) as e:
    _run("decode|resize(8)", {"image": b"\xff\xd8\xff garbage"})
  assert e.value.reason == "bad_image"
  with pytest.raises(BadSample) as e:  # a truncated JPEG fails when it is decoded, in a later op
    _run("decode|resize(8)", {"image": jpeg(1, size=64)[:300]})
  assert e.value.reason == "bad_image"
  with pytest.raises(BadSample) as e:
    _run("decode(max_pixels=100)", {"image": _png(20, 20)})
  assert e.value.reason == "image_too_large"
  with pytest.raises(BadSample) as e:
    _run("decode|random_crop(32)", {"image": _png(20, 40)})
  assert e.value.reason == "image_too_small"
  with pytest.raises(BadSample) as e:
    _run("tokenize", {"caption": "  "}, tokenizer=get_tokenizer("bytes"), max_len=8)
  assert e.value.reason == "empty_caption"


def test_errors_list_known_ops_and_the_signature():
  with pytest.raises(ValueError, match=r"pp op 'resise' is unknown; known: decode, resize, resize_small"):
    pp.build("decode|resise(224)")
  with pytest.raises(ValueError, match=r"does not match resize\(size: Any, key: str = 'image'"):
    pp.build("decode|resize(224, 3, 4, 5)")
  with pytest.raises(ValueError, match=r"does not match value_range.*unexpected keyword"):
    pp.build("value_range(vmni=0)")
  with pytest.raises(ValueError, match="must be a positive int"):
    pp.build("resize(-3)")
  with pytest.raises(ValueError, match="Python literals"):
    pp.build("resize(size)")


def _photo(w, h, seed):
  """A photo-like JPEG: smooth colour fields plus fine texture."""
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
  image = np.clip(np.asarray(coarse, np.int16) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


@pytest.mark.parametrize("op", ["resize(64)", "resize_small(60)", "inception_crop(64, area_min=40)"])
def test_reduced_scale_decode_stays_within_tolerance_of_full_decode(op):
  for seed in range(3):
    data = _photo(640, 480, seed)  # 1/2 .. 1/8 decodes still cover a 64 px output
    fast = _run(f"decode|{op}", {"image": data}, seed=seed)["image"].astype(np.float32)
    full = _run(f"decode(draft=False)|{op}", {"image": data}, seed=seed)["image"].astype(np.float32)
    diff = np.abs(fast - full)
    assert fast.shape == full.shape
    assert 0 < diff.mean() <= 1.5 and diff.max() <= 16  # > 0: the reduced decode did run
  small = _photo(80, 64, 0)  # a crop < 2x the output: no reduced decode, same pixels as full decode
  np.testing.assert_array_equal(_run("decode|inception_crop(64)", {"image": small})["image"],
                                _run("decode(draft=False)|inception_crop(64)", {"image": small})["image"])
  with pytest.raises(ValueError, match="draft_upscale"):
    pp.build("decode(draft_upscale=0.5)")
