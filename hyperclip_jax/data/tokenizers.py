"""Text tokenizers behind one registry, `get_tokenizer(spec)`.

A spec is a name or a call with literal options, as config.data.tokenizer spells it:
  bytes                                   UTF-8 bytes + 3 (pad=0, bos=1, eos=2); no vocabulary file, the default
  demo_words                              the demo grammar's closed vocabulary
  sentencepiece(model='c4_en.model', sticky_eos=True)   a user-given sentencepiece model (any epath)
  clip_bpe(vocab='')                      CLIP's BPE; vocab='' = the merges file shipped in data/vocab/
Options shared by all: lowercase, add_eos, sticky_eos, and pad_id (sentencepiece, clip_bpe).

Every tokenizer has `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `encode(texts, max_len) -> int32 [N, L]`
and `decode(ids) -> list[str]`. Encoding appends EOS and pads; truncation keeps the EOS; `sticky_eos`
pads with EOS instead of pad (SigLIP's convention, so "last token" pooling always reads an EOS).
"""
import re
from typing import Callable, Protocol, Sequence

import numpy as np

from hyperclip_jax.data import pp, subword
from hyperclip_jax.data.sources import demo

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = 3


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray: ...

  def decode(self, ids: np.ndarray) -> list[str]: ...


class ByteTokenizer:
  """UTF-8 byte-level tokenizer; vocab_size = 256 + 3 specials."""

  def __init__(self, lowercase: bool = False, add_bos: bool = False, add_eos: bool = True,
               sticky_eos: bool = False):
    if sticky_eos and not add_eos:
      raise ValueError("tokenizer sticky_eos=True needs add_eos=True (it pads with the EOS id)")
    self.lowercase, self.add_bos, self.add_eos, self.sticky_eos = lowercase, add_bos, add_eos, sticky_eos
    self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
    self.vocab_size = 256 + NUM_SPECIAL

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids int32 [len(texts), max_len]: [bos] bytes eos pad... (truncated to fit, EOS kept)."""
    if isinstance(texts, str):
      raise ValueError("tokenizer.encode takes a list of strings; wrap a single text as [text]")
    reserved = int(self.add_bos) + int(self.add_eos)
    if max_len <= reserved:
      raise ValueError(f"tokenizer max_len={max_len} leaves no room for text; use max_len > {reserved}")
    fill = self.eos_id if self.sticky_eos else self.pad_id
    out = np.full((len(texts), max_len), fill, np.int32)  # [N, L]
    room = max_len - reserved
    for row, text in enumerate(texts):
      data = (text.lower() if self.lowercase else text).encode("utf-8")
      if len(data) > room:
        cut = room
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never split a multi-byte character
          cut -= 1
        data = data[:cut]
      ids = np.frombuffer(data, np.uint8).astype(np.int32) + NUM_SPECIAL
      start = int(self.add_bos)
      if self.add_bos:
        out[row, 0] = self.bos_id
      out[row, start:start + len(ids)] = ids
      if self.add_eos:
        out[row, start + len(ids)] = self.eos_id
    return out

  def decode(self, ids: np.ndarray) -> list[str]:
    """Texts from ids [N, L] (or [L]): everything from the first EOS on and all specials are dropped."""
    ids = np.asarray(ids)
    rows = ids[None] if ids.ndim == 1 else ids
    texts = []
    for row in rows:
      row = row.tolist()
      if self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      data = bytes(t - NUM_SPECIAL for t in row if NUM_SPECIAL <= t < self.vocab_size)
      texts.append(data.decode("utf-8", errors="replace"))
    return texts


class WordTokenizer:
  """Whole-word tokenizer over a fixed vocabulary (ids: specials, UNK = 3, then the words in order).

  Words are runs of letters, and each other non-space character is its own token; unknown words map to UNK.
  'demo_words' uses the demo grammar's closed vocabulary: a caption is ~10 tokens instead of ~55 bytes,
  which makes the demo's text tower both cheaper and quicker to learn.
  """
  UNK_ID = NUM_SPECIAL

  def __init__(self, vocabulary: Sequence[str], lowercase: bool = True, sticky_eos: bool = False):
    words = list(dict.fromkeys(vocabulary))
    self._ids = {w: NUM_SPECIAL + 1 + i for i, w in enumerate(words)}
    self._words = {i: w for w, i in self._ids.items()}
    self.lowercase, self.sticky_eos = lowercase, sticky_eos
    self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
    self.vocab_size = NUM_SPECIAL + 1 + len(words)

  def split(self, text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+|[^\s]", text.lower() if self.lowercase else text)

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids int32 [len(texts), max_len]: words eos pad... (truncated to fit, EOS kept)."""
    if isinstance(texts, str):
      raise ValueError("tokenizer.encode takes a list of strings; wrap a single text as [text]")
    if max_len < 2:
      raise ValueError(f"tokenizer max_len={max_len} leaves no room for text; use max_len > 1")
    out = np.full((len(texts), max_len), self.eos_id if self.sticky_eos else self.pad_id, np.int32)
    for row, text in enumerate(texts):
      ids = [self._ids.get(w, self.UNK_ID) for w in self.split(text)][:max_len - 1]
      out[row, :len(ids)] = ids
      out[row, len(ids)] = self.eos_id
    return out

  def decode(self, ids: np.ndarray) -> list[str]:
    ids = np.asarray(ids)
    texts = []
    for row in (ids[None] if ids.ndim == 1 else ids).tolist():
      row = row[:row.index(self.eos_id)] if self.eos_id in row else row
      texts.append(" ".join(self._words.get(t, "<unk>") for t in row if t >= NUM_SPECIAL))
    return texts


def _demo_words(**kw) -> WordTokenizer:
  return WordTokenizer(demo.vocabulary(), **kw)


TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "bytes": ByteTokenizer,
    "demo_words": _demo_words,
    "sentencepiece": subword.SentencePieceTokenizer,
    "clip_bpe": subword.ClipBpeTokenizer,
}
_CACHE: dict[str, Tokenizer] = {}


def get_tokenizer(name: str, **kw) -> Tokenizer:
  """The tokenizer for spec `name` ('bytes', "sentencepiece(model='x.model')", ...), plus options `kw`."""
  spec, args = name, ()
  if "(" in name:
    name, args, spec_kw = pp.parse_call(name, TOKENIZERS, "tokenizer")
    kw = {**spec_kw, **kw}
  if name not in TOKENIZERS:
    raise ValueError(f"tokenizer name {name!r} is unknown; known: {', '.join(sorted(TOKENIZERS))}")
  key = repr((spec, sorted(kw.items())))
  if key not in _CACHE:  # vocabulary files are read once per process
    try:
      _CACHE[key] = TOKENIZERS[name](*args, **kw)
    except TypeError as e:
      raise ValueError(f"tokenizer {spec!r}: {e}") from None
  return _CACHE[key]
