"""Manifest source (JSON lines / CSV of image paths + captions): decoding, bad rows counted, exact resume."""
import json

import ml_collections
import numpy as np
import pytest
from conftest import jpeg

from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.tokenizers import get_tokenizer

TOK = get_tokenizer("bytes")


def _write(tmp_path, n=8, bad=()):
  (tmp_path / "img").mkdir()
  rows = []
  for i in range(n):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(i))
    rows.append({"image": f"img/{i}.jpg", "caption": f"sample {i}"})
  return rows


def _config(manifest, **kw):
  fields = dict(name="manifest", manifest=str(manifest), image_size=16, max_len=24, worker_count=0)
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


def _ids(batch):
  return [int(t.split()[1]) for t in TOK.decode(batch["text"])]


def test_jsonl_manifest_epoch_and_bad_rows_counted(tmp_path):
  rows = _write(tmp_path)
  rows[2]["image"] = "img/missing.jpg"
  rows[5]["caption"] = ""
  (tmp_path / "img" / "6.jpg").write_bytes(b"not an image")
  lines = [json.dumps(r) for r in rows] + ["{broken json"]
  (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
  it = input_pipeline.make_train_iterator(_config(tmp_path / "m.jsonl"), TOK, 3, seed=0)
  batches = [next(it) for _ in range(3)]  # one epoch of 9 rows; each bad row is replaced by the next good one
  assert batches[0]["image"].shape == (3, 16, 16, 3) and batches[0]["image"].dtype == np.uint8
  ids = [i for b in batches for i in _ids(b)]
  assert set(ids) == {0, 1, 3, 4, 7}
  skipped = {k.split("/")[-1]: v for k, v in it.metrics().items() if v}
  assert skipped == {"missing_file": 1, "empty_caption": 1, "bad_image": 1, "bad_record": 1}
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  restored = input_pipeline.make_train_iterator(_config(tmp_path / "m.jsonl"), TOK, 3, seed=0)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for key in ("image", "text", "index"):
      np.testing.assert_array_equal(got[key], want[key])
  assert restored.metrics() == it.metrics()


def test_csv_manifest_with_other_column_names(tmp_path):
  rows = _write(tmp_path, n=4)
  text = "path,text\n" + "".join(f"{r['image']},\"{r['caption']}, indeed\"\n" for r in rows)
  (tmp_path / "m.csv").write_text(text)
  config = _config(tmp_path / "m.csv", image_key="path", caption_key="text", shuffle=False,
                   pp="decode|resize_small(16)|central_crop(16)|value_range(-1, 1)|tokenize|keep('image', 'text')")
  batch = next(input_pipeline.make_train_iterator(config, TOK, 4, seed=0))
  assert TOK.decode(batch["text"]) == [f"sample {i}, indeed" for i in range(4)]


def test_manifest_errors(tmp_path):
  with pytest.raises(ValueError, match="cannot be read"):
    input_pipeline.make_train_iterator(_config(tmp_path / "none.jsonl"), TOK, 2, seed=0)
  (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "x.jpg", "caption": "c"}) + "\n")
  it = input_pipeline.make_train_iterator(_config(tmp_path / "bad.jsonl"), TOK, 2, seed=0)
  with pytest.raises(ValueError, match="bad.jsonl yields no usable sample"):
    next(it)
  bad_pp = _config(tmp_path / "bad.jsonl", pp="decode|resize(8)|value_range(-1, 1)|tokenize")
  with pytest.raises(ValueError, match=r"resize\(16\)"):
    (tmp_path / "img").mkdir()
    (tmp_path / "x.jpg").write_bytes(jpeg(0))
    next(input_pipeline.make_train_iterator(bad_pp, TOK, 2, seed=0))
