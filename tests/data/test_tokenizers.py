"""Byte tokenizer: layout, round trip, truncation, sticky EOS, registry errors."""
import numpy as np
import pytest

from hyperclip_jax.data.tokenizers import ByteTokenizer, get_tokenizer


def test_layout_is_bytes_offset_then_eos_then_pad():
  tok = get_tokenizer("bytes")
  ids = tok.encode(["ab", ""], max_len=5)
  assert ids.dtype == np.int32 and ids.shape == (2, 5)
  np.testing.assert_array_equal(ids, [[ord("a") + 3, ord("b") + 3, 2, 0, 0], [2, 0, 0, 0, 0]])
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)


def test_round_trip_keeps_unicode_text():
  tok = get_tokenizer("bytes")
  texts = ["a small red circle", "café ünïcode ✓", ""]
  ids = tok.encode(texts, max_len=40)
  assert ids.max() < tok.vocab_size
  assert tok.decode(ids) == texts


def test_truncation_keeps_eos_and_whole_characters():
  tok = get_tokenizer("bytes")
  np.testing.assert_array_equal(tok.encode(["abcdefgh"], 4)[0], [100, 101, 102, 2])
  ids = tok.encode(["aé"], 3)[0]  # 'é' is 2 bytes and does not fit: it is dropped, not split
  np.testing.assert_array_equal(ids, [100, 2, 0])
  assert tok.decode(ids) == ["a"]


def test_sticky_eos_pads_with_eos():
  tok = get_tokenizer("bytes", sticky_eos=True)
  np.testing.assert_array_equal(tok.encode(["ab"], 6)[0], [100, 101, 2, 2, 2, 2])
  assert tok.decode(tok.encode(["ab"], 6)) == ["ab"]


def test_lowercase_and_bos_options():
  tok = ByteTokenizer(lowercase=True, add_bos=True)
  np.testing.assert_array_equal(tok.encode(["AB"], 5)[0], [1, 100, 101, 2, 0])
  assert tok.decode(tok.encode(["Red Circle"], 16)) == ["red circle"]


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="known: bytes"):
    get_tokenizer("sentencepeice")
  tok = get_tokenizer("bytes")
  with pytest.raises(ValueError, match="max_len"):
    tok.encode(["a"], 1)
  with pytest.raises(ValueError, match="list of strings"):
    tok.encode("a red circle", 8)
  with pytest.raises(ValueError, match="sticky_eos"):
    get_tokenizer("bytes", sticky_eos=True, add_eos=False)


def test_demo_words_cover_every_caption_and_prompt_without_unk():
  from hyperclip_jax.data.sources import demo
  tok = get_tokenizer("demo_words")
  source = demo.DemoSource(32, two_objects_prob=0.5)
  texts = [source[i]["caption"] for i in range(2000)]
  texts += [p for task in demo.demo_tasks(32, 4).values() for per_class in task.prompts() for p in per_class]
  ids = tok.encode(texts, 32)
  assert not (ids == tok.UNK_ID).any()
  assert (ids == tok.eos_id).sum(1).min() == 1  # nothing truncated at 32 tokens
  assert tok.decode(tok.encode(["A red circle, at the top left."], 16)) == ["a red circle , at the top left ."]
  assert tok.encode(["a zebra"], 4)[0].tolist() == [tok.encode(["a"], 2)[0, 0], tok.UNK_ID, tok.eos_id, 0]
