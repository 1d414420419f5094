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


_CORPUS = ["a small red circle in the middle", "a large blue square at the top left", "there is a green star",
           "a photo of a striped yellow triangle", "an image of a purple cross", "the cat sat on the mat"] * 20


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  """A 40-piece unigram sentencepiece model with SigLIP c4_en's special ids (pad 0, eos 1, unk 2)."""
  spm = pytest.importorskip("sentencepiece")
  import io
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_CORPUS), model_writer=buf, vocab_size=40, model_type="unigram", pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, num_threads=1, character_coverage=1.0, minloglevel=2)
  path = tmp_path_factory.mktemp("sp") / "tiny.model"
  path.write_bytes(buf.getvalue())
  return str(path)


def test_sentencepiece_ids_of_a_known_sentence_are_stable(sp_model):
  tok = get_tokenizer(f"sentencepiece(model={sp_model!r})")
  assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (40, 0, 1)
  ids = tok.encode(["a small red circle", "the striped cat!"], 16)
  np.testing.assert_array_equal(ids, [[5, 10, 25, 26, 3, 16, 9, 19, 24, 15, 32, 7, 1, 0, 0, 0],
                                      [6, 10, 27, 14, 4, 9, 19, 21, 2, 1, 0, 0, 0, 0, 0, 0]])
  assert tok.decode(ids[:1]) == ["a small red circle"]


def test_sentencepiece_sticky_eos_truncation_and_lowercase(sp_model):
  tok = get_tokenizer(f"sentencepiece(model={sp_model!r}, sticky_eos=True, lowercase=True)")
  ids = tok.encode(["A SMALL red circle"], 16)[0]
  assert ids[12:].tolist() == [1, 1, 1, 1]  # padded with EOS: 'last' pooling reads an EOS
  assert tok.encode(["a small red circle"], 5)[0].tolist() == [5, 10, 25, 26, 1]  # EOS survives truncation
  with pytest.raises(ValueError, match="cannot be read"):
    get_tokenizer("sentencepiece(model='/no/such.model')")


def test_clip_bpe_from_a_merges_file(tmp_path):
  import gzip
  merges = ["#version: 0.2", "c a", "ca t</w>", "t h", "th e</w>", "o n</w>"]
  path = tmp_path / "vocab.txt.gz"
  path.write_bytes(gzip.compress("\n".join(merges).encode()))
  tok = get_tokenizer(f"clip_bpe(vocab={str(path)!r})")
  assert tok.vocab_size == 512 + 5 + 2 and (tok.bos_id, tok.eos_id, tok.pad_id) == (517, 518, 0)
  ids = tok.encode(["The  cat on!"], 8)[0].tolist()
  byte = lambda c: ord(c) - 33  # printable ASCII bytes come first, in byte order
  assert ids == [517, 512 + 3, 512 + 1, 512 + 4, byte("!") + 256, 518, 0, 0]
  assert tok.decode(np.asarray([ids])) == ["the cat on !"]
  sticky = get_tokenizer(f"clip_bpe(vocab={str(path)!r}, sticky_eos=True)")
  assert sticky.encode(["cat"], 4)[0].tolist() == [517, 512 + 1, 518, 518]


def test_clip_bpe_works_out_of_the_box_with_the_shipped_merges_file():
  import hashlib

  from hyperclip_jax.data import subword
  digest = hashlib.sha256(open(subword.SHIPPED_CLIP_BPE, "rb").read()).hexdigest()
  assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # data/vocab/README.md
  tok = get_tokenizer("clip_bpe()")
  assert tok.vocab_size == 49408 and (tok.bos_id, tok.eos_id) == (49406, 49407)
  # CLIP's own ids for this prompt (openai/CLIP's SimpleTokenizer, as in its README example).
  ids = tok.encode(["A photo of a  CAT."], 10)[0].tolist()
  assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407, 0, 0]
  assert tok.decode(np.asarray([ids])) == ["a photo of a cat ."]


def test_tokenizer_spec_errors_name_the_problem():
  with pytest.raises(ValueError, match="tokenizer 'sentencepeice' is unknown; known: bytes"):
    get_tokenizer("sentencepeice(model='x')")
  with pytest.raises(ValueError, match="unexpected keyword"):
    get_tokenizer("bytes(max_length=3)")


def test_last_pooling_needs_sticky_eos_before_anything_compiles():
  import os

  from hyperclip_jax import config as config_lib
  from hyperclip_jax import validation
  demo = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")
  config = config_lib.load_config(f"{demo}:tiny=true")
  config_lib.apply_override(config, "model.text.pool", "last")
  with pytest.raises(config_lib.ConfigError, match=r"pool='last' needs sticky EOS.*sticky_eos=True"):
    validation.validate(config, 8)
  config_lib.apply_override(config, "data.tokenizer", "bytes(sticky_eos=True)")
  validation.validate(config, 8)
