"""Whole-shard-set tools behind `hyperclip-data stats` and `hyperclip-data filter`.

Both read every shard of a pattern with the training reader (so they count bad samples by the same
reasons), one process per shard in parallel; a good sample is one whose image decodes and whose caption is
non-empty. `filter` keeps good samples whose caption names a class (whole words, case-insensitive), and
writes them, every original member kept, to new shards under fresh sequential keys.
"""
import io
import json
import multiprocessing
import os
import re
import tarfile
from typing import Any, Iterator, Sequence

import numpy as np

from hyperclip_jax.data import bad_data, pp
from hyperclip_jax.data.bad_data import BadSample
from hyperclip_jax.data.sources import webdataset
from hyperclip_jax.data.tokenizers import get_tokenizer

_CHECK = "decode|resize(32)"  # forces a (reduced-size) decode: cheap, and a broken file still fails


def _good_samples(path: str, caption_key: str) -> Iterator[tuple[dict, str] | BadSample]:
  check = pp.build(_CHECK)
  rng = np.random.default_rng(0)
  for item in webdataset.read_shard(path):
    if isinstance(item, BadSample):
      yield item
      continue
    try:
      example = webdataset.to_example(item, caption_key)
      check(dict(example), rng)
      yield item, example["caption"]
    except BadSample as e:
      yield e


def _shard_stats(job: tuple[str, str, str, int]) -> dict[str, Any]:
  path, caption_key, tokenizer_spec, max_len = job
  tok = get_tokenizer(tokenizer_spec)
  skipped, lengths = bad_data.zero_counts(), []
  for item in _good_samples(path, caption_key):
    if isinstance(item, BadSample):
      bad_data.count(skipped, item.reason)
      continue
    ids = tok.encode([item[1]], 4096)[0]
    lengths.append(int(np.count_nonzero(ids != tok.pad_id)))
  return {"skipped": skipped, "lengths": lengths}


def _map(fn, jobs: list, workers: int) -> Iterator[Any]:
  if workers <= 1 or len(jobs) <= 1:
    yield from map(fn, jobs)
    return
  with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
    yield from pool.imap(fn, jobs)


def stats(pattern: str, caption_key: str = "txt", tokenizer: str = "bytes", max_len: int = 64,
          workers: int = 1) -> dict[str, Any]:
  """{'shards', 'good', 'skipped': {reason: n}, 'caption_tokens': {min, mean, p50, p90, p99, max,
  over_max_len}} over every shard of `pattern` (token counts include EOS/BOS, as the model sees them)."""
  shards = webdataset.expand_pattern(pattern)
  if not shards:
    raise ValueError(f"pattern {pattern!r} matches no shard")
  skipped, lengths = bad_data.zero_counts(), []
  for result in _map(_shard_stats, [(s, caption_key, tokenizer, max_len) for s in shards], workers):
    skipped += result["skipped"]
    lengths += result["lengths"]
  if not lengths:
    raise ValueError(f"pattern {pattern!r} yields no usable sample in {len(shards)} shard(s) "
                     f"(skipped: {_nonzero(skipped)})")
  n = np.asarray(lengths)
  tokens = {"tokenizer": tokenizer, "min": int(n.min()), "mean": round(float(n.mean()), 2),
            **{f"p{q}": int(np.percentile(n, q)) for q in (50, 90, 99)}, "max": int(n.max()),
            "max_len": max_len, "over_max_len": int((n > max_len).sum())}
  return {"shards": len(shards), "good": len(lengths),
          "skipped": {r: int(c) for r, c in zip(bad_data.REASONS, skipped)}, "caption_tokens": tokens}


def _nonzero(counts: np.ndarray) -> dict[str, int]:
  return {r: int(c) for r, c in zip(bad_data.REASONS, counts) if c}


def class_pattern(class_names: Sequence[str]) -> re.Pattern:
  """One regex matching any class name as whole words, case-insensitive (longest names first)."""
  names = sorted({n.strip().lower() for n in class_names if n.strip()}, key=len, reverse=True)
  if not names:
    raise ValueError("the class list is empty")
  return re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in names) + r")(?!\w)", re.IGNORECASE)


def _filter_shard(job: tuple[str, str, Any]) -> dict[str, Any]:
  path, caption_key, pattern = job
  kept, skipped, classes, read = [], bad_data.zero_counts(), {}, 0
  for item in _good_samples(path, caption_key):
    read += 1
    if isinstance(item, BadSample):
      bad_data.count(skipped, item.reason)
      continue
    sample, caption = item
    found = {m.lower() for m in pattern.findall(caption)}
    if found:
      kept.append({k: v for k, v in sample.items() if k != "__key__"})
      for name in found:
        classes[name] = classes.get(name, 0) + 1
  return {"kept": kept, "skipped": skipped, "classes": classes, "good": read - int(skipped.sum())}


def filter_shards(pattern: str, out_dir: str, class_names: Sequence[str], caption_key: str = "txt",
                  samples_per_shard: int = 10_000, workers: int = 1) -> dict[str, Any]:
  """Writes the samples whose caption names a class to out_dir/{00000..}.tar and out_dir/stats.json."""
  shards = webdataset.expand_pattern(pattern)
  if not shards:
    raise ValueError(f"pattern {pattern!r} matches no shard")
  regex = class_pattern(class_names)
  os.makedirs(out_dir, exist_ok=True)
  writer = _ShardWriter(out_dir, samples_per_shard)
  skipped, classes, good = bad_data.zero_counts(), {}, 0
  for result in _map(_filter_shard, [(s, caption_key, regex) for s in shards], workers):
    for sample in result["kept"]:
      writer.add(sample)
    skipped += result["skipped"]
    good += result["good"]
    for name, n in result["classes"].items():
      classes[name] = classes.get(name, 0) + n
  writer.close()
  summary = {"input_shards": len(shards), "good": good, "kept": writer.count, "output_shards": writer.shards,
             "output_pattern": writer.pattern(), "skipped": _nonzero(skipped), "classes_found": len(classes),
             "per_class": dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0])))}
  with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


class _ShardWriter:
  """Sequentially keyed samples into out_dir/00000.tar, 00001.tar, ... (samples_per_shard each)."""

  def __init__(self, out_dir: str, samples_per_shard: int):
    self.out_dir, self.per_shard = out_dir, max(1, samples_per_shard)
    self.count, self.shards, self._tar = 0, 0, None

  def add(self, sample: dict[str, bytes]) -> None:
    if self._tar is None or self.count % self.per_shard == 0:
      self.close()
      self._tar = tarfile.open(os.path.join(self.out_dir, f"{self.shards:05d}.tar"), "w")
      self.shards += 1
    key = f"{self.count:09d}"
    for ext, data in sorted(sample.items()):
      info = tarfile.TarInfo(f"{key}.{ext}")
      info.size, info.mode = len(data), 0o644
      self._tar.addfile(info, io.BytesIO(data))
    self.count += 1

  def close(self) -> None:
    if self._tar is not None:
      self._tar.close()
      self._tar = None

  def pattern(self) -> str:
    if not self.shards:
      return ""
    return os.path.join(self.out_dir, f"{{00000..{self.shards - 1:05d}}}.tar")
