"""Evaluation images decoded by grain worker processes and split across hosts.

`sharded_eval_batches` gives the same (images, labels) as input_pipeline.make_source_eval_batches, decoded in
`worker_count` processes; with P hosts, host k decodes only items k, k+P, k+2P, ... (1/P of the set). Metrics
that are sums over images (hits, counts) then combine exactly: a sum over hosts of per-host sums. Bad items are
dropped as in the serial version, so the batches of one host are those of the serial reader over its items.
"""
import math
from typing import Any, Iterator

import grain
import numpy as np
from absl import flags as absl_flags

from hyperclip_jax.data import bad_data
from hyperclip_jax.data import pp as pp_lib
from hyperclip_jax.data.input_pipeline import EVAL_PP


class _DecodeItems:
  """Picklable: a chunk of item indices -> (images f32 [n, S, S, 3], labels i32 [n], bad reason ids [n])."""

  def __init__(self, source: Any, spec: str, image_size: int):
    self.source, self.spec, self.image_size = source, spec, image_size

  def __call__(self, indices: np.ndarray) -> dict:
    fn = pp_lib.build(self.spec)  # cheap; built here so that nothing unpicklable crosses to the workers
    rng = np.random.default_rng(0)  # eval ops are deterministic; kept for the op signature
    images = np.zeros((len(indices), self.image_size, self.image_size, 3), np.float32)
    labels = np.full((len(indices),), -1, np.int32)
    bad = np.full((len(indices),), -1, np.int32)
    for row, i in enumerate(indices):
      try:
        example = self.source[int(i)]
        images[row] = np.asarray(fn({"image": example["image"]}, rng)["image"], np.float32)
        labels[row] = int(example["label"])
      except bad_data.BadSample as e:
        bad[row] = bad_data.REASONS.index(e.reason)
    return {"image": images, "label": labels, "bad": bad}


def sharded_eval_batches(source: Any, image_size: int, batch_size: int, pp: str = "", n_eval: int = 0,
                         worker_count: int = 0, process_index: int = 0, process_count: int = 1
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images f32 [b, S, S, 3], labels i32 [b]) over this host's share of the first n_eval items (0 = all), in
  order; the last batch may be smaller. Bad items are skipped and logged once per reason."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  n = min(n_eval or len(source), len(source))
  mine = np.arange(process_index, n, process_count)
  chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
  ds = grain.MapDataset.source(chunks).map(_DecodeItems(source, pp or EVAL_PP.format(size=image_size), image_size))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count > 0:
    if not absl_flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; use their defaults
      absl_flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2))
  skips = bad_data.SkipLog()
  images, labels, held = [], [], 0
  chunks_it = iter(it_ds)
  try:
    for chunk in chunks_it:
      ok = chunk["bad"] < 0
      counts = np.bincount(chunk["bad"][~ok], minlength=len(bad_data.REASONS))
      if counts.any():
        skips.add(counts)
      images.append(chunk["image"][ok])
      labels.append(chunk["label"][ok])
      held += int(ok.sum())
      while held >= batch_size:  # re-cut into full batches, as the serial reader fills them
        imgs, labs = np.concatenate(images), np.concatenate(labels)
        yield imgs[:batch_size], labs[:batch_size]
        images, labels, held = [imgs[batch_size:]], [labs[batch_size:]], held - batch_size
    if held:
      yield np.concatenate(images), np.concatenate(labels)
  finally:
    if hasattr(chunks_it, "close"):  # stops grain's worker processes when the reader is dropped early
      chunks_it.close()


def host_eval_batches(source: Any, image_size: int, batch_size: int, pp: str = "", n_eval: int = 0,
                      worker_count: int = 0, process_index: int = 0, process_count: int = 1
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This host's rows of every global eval batch, for a jitted evaluator that runs on all hosts in lockstep.

  Host k decodes items k, k+P, ... (sharded_eval_batches) and yields exactly ceil(ceil(n / P) / b) batches of
  exactly b = batch_size / P rows, the same count on every host: rows past its share (and bad items' places)
  are zero images labelled -1, which metrics ignore.
  """
  if batch_size < process_count or batch_size % process_count:
    raise ValueError(f"eval batch_size={batch_size} must be a positive multiple of the process count "
                     f"{process_count}")
  local = batch_size // process_count
  n = min(n_eval or len(source), len(source))
  steps = math.ceil(math.ceil(n / process_count) / local)
  blank = np.zeros((local, image_size, image_size, 3), np.float32)
  batches = sharded_eval_batches(source, image_size, local, pp, n_eval, worker_count, process_index, process_count)
  try:
    for _ in range(steps):
      images, labels = next(batches, (blank[:0], np.zeros((0,), np.int32)))
      pad = local - len(labels)
      yield (np.concatenate([images, blank[:pad]]) if pad else images,
             np.concatenate([labels, np.full((pad,), -1, np.int32)]) if pad else labels)
  finally:
    batches.close()  # stops its grain workers
