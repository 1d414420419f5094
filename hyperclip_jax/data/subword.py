"""Subword tokenizers from vocabulary files: sentencepiece models and CLIP's BPE merges (shipped).

Both follow the byte tokenizer's layout: [bos] tokens eos fill..., truncation keeps the EOS, and `sticky_eos`
fills with EOS instead of `pad_id` (SigLIP: big_vision's eos='sticky', pad_value=eos). Files are read through
etils.epath, so a gs:// or other remote path works like a local one.
"""
import functools
import gzip
import os
import re
from typing import Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

SHIPPED_CLIP_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab", "bpe_simple_vocab_16e6.txt.gz")


def _read_bytes(path: str, what: str) -> bytes:
  try:
    return epath.Path(path).read_bytes()
  except (OSError, ValueError) as e:
    raise ValueError(f"{what} file {path!r} cannot be read ({type(e).__name__}); pass an existing path") from None


def _pack(rows: Sequence[Sequence[int]], max_len: int, bos: int | None, eos: int | None, fill: int) -> np.ndarray:
  """Token id lists -> int32 [N, max_len]: [bos] ids[:room] [eos] fill..."""
  reserved = int(bos is not None) + int(eos is not None)
  if max_len <= reserved:
    raise ValueError(f"tokenizer max_len={max_len} leaves no room for text; use max_len > {reserved}")
  out = np.full((len(rows), max_len), fill, np.int32)
  head = [] if bos is None else [bos]
  tail = [] if eos is None else [eos]
  for r, ids in enumerate(rows):
    row = head + list(ids)[:max_len - reserved] + tail
    out[r, :len(row)] = row
  return out


class _Options:
  """lowercase / add_bos / add_eos / sticky_eos handling shared by the subword tokenizers."""

  def _set_options(self, lowercase: bool, add_bos: bool, add_eos: bool, sticky_eos: bool) -> None:
    if sticky_eos and not add_eos:
      raise ValueError("tokenizer sticky_eos=True needs add_eos=True (it pads with the EOS id)")
    self.lowercase, self.add_bos, self.add_eos, self.sticky_eos = lowercase, add_bos, add_eos, sticky_eos

  def _encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    raise NotImplementedError

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids int32 [len(texts), max_len]."""
    if isinstance(texts, str):
      raise ValueError("tokenizer.encode takes a list of strings; wrap a single text as [text]")
    texts = [t.lower() for t in texts] if self.lowercase else list(texts)
    return _pack(self._encode_ids(texts), max_len, self.bos_id if self.add_bos else None,
                 self.eos_id if self.add_eos else None, self.eos_id if self.sticky_eos else self.pad_id)

  def _cut(self, row: list[int]) -> list[int]:
    return row[:row.index(self.eos_id)] if self.eos_id in row else row


class SentencePieceTokenizer(_Options):
  """A sentencepiece model file (e.g. SigLIP's c4_en: pad 0, eos 1, unk 2; lowercase=True as in big_vision)."""

  def __init__(self, model: str, lowercase: bool = False, add_bos: bool = False, add_eos: bool = True,
               sticky_eos: bool = False, pad_id: int | None = None):
    self._sp = spm.SentencePieceProcessor(model_proto=_read_bytes(model, "sentencepiece model"))
    self._set_options(lowercase, add_bos, add_eos, sticky_eos)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id, self.bos_id = self._sp.eos_id(), self._sp.bos_id()
    if add_eos and self.eos_id < 0:
      raise ValueError(f"sentencepiece model {model!r} has no EOS piece; use add_eos=False")
    if add_bos and self.bos_id < 0:
      raise ValueError(f"sentencepiece model {model!r} has no BOS piece; use add_bos=False")
    self.pad_id = pad_id if pad_id is not None else max(self._sp.pad_id(), 0)
    if not 0 <= self.pad_id < self.vocab_size:
      raise ValueError(f"tokenizer pad_id={self.pad_id} is outside the vocabulary [0, {self.vocab_size})")

  def _encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: np.ndarray) -> list[str]:
    ids = np.asarray(ids)
    rows = (ids[None] if ids.ndim == 1 else ids).tolist()
    specials = {self.pad_id, self.bos_id, self.eos_id}
    return [self._sp.decode([t for t in self._cut(row) if t not in specials]) for row in rows]


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
  """CLIP/GPT-2's reversible byte -> printable character map (whitespace and controls shifted past 255)."""
  printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
  table = {b: chr(b) for b in printable}  # insertion order = CLIP's id order: printable bytes first
  for extra, b in enumerate(b for b in range(256) if b not in table):
    table[b] = chr(256 + extra)
  return table


# CLIP's pre-tokenizer with the standard `re` module: contractions, letter runs, single digits, other runs.
_WORDS = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
                    re.IGNORECASE)


class ClipBpeTokenizer(_Options):
  """CLIP's byte-level BPE from its merges file (bpe_simple_vocab_16e6.txt[.gz]); vocab 49408 by default.

  Ids: 256 byte characters, the same with '</w>', one per merge, then <|startoftext|> (bos) and
  <|endoftext|> (eos). Pads with pad_id=0 as OpenCLIP does; text is lowercased and whitespace-collapsed.
  vocab='' reads the merges file shipped with the package (data/vocab/README.md: source, licence, checksum).
  """

  def __init__(self, vocab: str = "", num_merges: int = 49152 - 256 - 2, lowercase: bool = True,
               add_bos: bool = True, add_eos: bool = True, sticky_eos: bool = False, pad_id: int = 0):
    data = _read_bytes(vocab or SHIPPED_CLIP_BPE, "CLIP BPE vocab")
    if data[:2] == b"\x1f\x8b":
      data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")
    if lines and "#version" in lines[0]:  # CLIP's file starts '"bpe_simple_vocab_16e6.txt#version: 0.2'
      lines = lines[1:]
    merges = [tuple(l.split()) for l in lines[:num_merges] if l.strip()]
    if not merges or any(len(m) != 2 for m in merges):
      raise ValueError(f"CLIP BPE vocab {vocab!r} is not a merges file (lines of two symbols)")
    self._ranks = {m: i for i, m in enumerate(merges)}
    self._b2u = _byte_to_unicode()
    self._u2b = {u: b for b, u in self._b2u.items()}
    symbols = list(self._b2u.values())
    symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    self._ids = {s: i for i, s in enumerate(symbols)}
    self._symbols = symbols
    self.vocab_size = len(symbols)
    self.bos_id, self.eos_id = self.vocab_size - 2, self.vocab_size - 1
    self.pad_id = pad_id
    self._set_options(lowercase, add_bos, add_eos, sticky_eos)
    self._cache: dict[str, list[int]] = {}

  def _bpe(self, word: str) -> list[int]:
    if word in self._cache:
      return self._cache[word]
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = [(self._ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
      rank, at = min(pairs)
      if rank == 1 << 30:
        break
      first, second = parts[at], parts[at + 1]
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence of the best pair, left to right
        if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = [self._ids[p] for p in parts]
    if len(self._cache) < 100_000:
      self._cache[word] = ids
    return ids

  def _encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    rows = []
    for text in texts:
      text = " ".join(text.split())
      ids = []
      for word in _WORDS.findall(text):
        ids += self._bpe("".join(self._b2u[b] for b in word.encode("utf-8")))
      rows.append(ids)
    return rows

  def decode(self, ids: np.ndarray) -> list[str]:
    ids = np.asarray(ids)
    rows = (ids[None] if ids.ndim == 1 else ids).tolist()
    out = []
    for row in rows:
      text = "".join(self._symbols[t] for t in self._cut(row)  # after the EOS cut, pads are gone
                     if 0 <= t < self.vocab_size and t not in (self.bos_id, self.eos_id))
      data = bytearray()
      for c in text.replace("</w>", " "):
        data += b" " if c == " " else bytes([self._u2b[c]])
      out.append(data.decode("utf-8", errors="replace").strip())
    return out
