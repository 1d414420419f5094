"""Streaming (not random-access) training input: webdataset shards read by a fixed set of reader streams.

Every epoch the shard list is reshuffled with the seed; reader stream s of T = hosts x streams_per_host reads
shards perm[s::T], so hosts and streams never overlap and each epoch reads every shard once. A stream reads
its shards in blocks of `shuffle_block` items, permutes each block (seeded), and turns items into examples
(bad ones are skipped and counted). Host batch n comes from local stream n mod S, whole, so the host's
batch sequence does not depend on how many grain worker processes (any divisor of S) decode it.

A stream's position is (epoch, shard, record, block, taken): the block started at item `record` of the
stream's `shard`-th shard of that epoch, and `taken` of its items are consumed. Every batch carries its
stream's position after it, so the iterator state is exact even while workers read ahead, and a resumed
stream re-reads only the current block's raw bytes.
"""
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from hyperclip_jax.data import bad_data, pixels, pp as pp_lib
from hyperclip_jax.data.bad_data import BadSample
from hyperclip_jax.data.sources import webdataset

START = (0, 0, 0, 0, 0)  # epoch, shard, record, block, taken


class Preprocess:
  """Picklable (for worker processes) raw example -> model example via a pp spec; checks output shapes."""

  def __init__(self, spec: str, tokenizer: Any, max_len: int, image_size: int):
    self.spec, self.tokenizer, self.max_len, self.image_size = spec, tokenizer, max_len, image_size
    # The final value_range runs in the train step (uint8 travels to the device): the host stops before it.
    self.host_spec, affine = pixels.split_device_affine(spec)
    self.image_dtype = np.uint8 if affine is not None else np.float32
    self._fn = pp_lib.build(self.host_spec, tokenizer, max_len)  # parse now: a bad spec fails before any worker

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_fn"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._fn = pp_lib.build(self.host_spec, self.tokenizer, self.max_len)

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    out = self._fn(example, rng)
    image, text = out.get("image"), out.get("text")
    want = (self.image_size, self.image_size, 3)
    if not isinstance(image, np.ndarray) or image.shape != want or image.dtype != self.image_dtype:
      got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
      raise ValueError(f"config.data.pp={self.spec!r} gives image {got}, the model needs {want}; end "
                       f"the image ops with resize({self.image_size})|value_range(-1, 1)")
    if not isinstance(text, np.ndarray) or text.shape != (self.max_len,):
      raise ValueError(f"config.data.pp={self.spec!r} gives no text of shape ({self.max_len},); add tokenize")
    return out


class ShardStreams:
  """What every reader stream shares: the shard list, seeds and the per-sample processing."""

  def __init__(self, pattern: str, shards: Sequence[str], total_streams: int, seed: int, shuffle: bool,
               shuffle_block: int, caption_key: str, process: Preprocess, local_batch: int):
    self.pattern, self.shards, self.total_streams = pattern, list(shards), total_streams
    self.seed, self.shuffle, self.block = seed, shuffle, max(1, shuffle_block if shuffle else 1)
    self.caption_key, self.process, self.local_batch = caption_key, process, local_batch

  def epoch_shards(self, epoch: int, stream: int) -> list[str]:
    order = np.arange(len(self.shards))
    if self.shuffle:
      order = np.random.default_rng([self.seed, 11, epoch]).permutation(len(self.shards))
    return [self.shards[i] for i in order[stream::self.total_streams]]

  def examples(self, stream: int, pos: Sequence[int]) -> Iterator[tuple[dict | BadSample, tuple]]:
    """(example or BadSample, position after it), endlessly, from position `pos` of global stream `stream`."""
    epoch, shard, record, block, taken = pos
    reader = None  # (shard, next record, open generator): continues a shard across blocks
    opened, last_good = 0, -1  # ordinals of shards read by this generator; of the last with a good sample
    shards, shards_epoch = [], None
    while True:
      if shards_epoch != epoch:
        shards, shards_epoch = self.epoch_shards(epoch, stream), epoch
      if opened - last_good > len(self.shards):
        raise ValueError(f"config.data.pattern={self.pattern!r} yields no usable sample: {len(self.shards)} "
                         "shards in a row gave none (see the data/skipped warnings); check the shards")
      items, ordinals, end = [], [], (shard, record)
      while len(items) < self.block and end[0] < len(shards):
        if reader is None or reader[:2] != end:
          reader = (end[0], end[1], webdataset.read_shard(shards[end[0]], skip=end[1]))
        item = next(reader[2], None)
        if item is None:
          end, reader = (end[0] + 1, 0), None
          opened += 1
          continue
        items.append(item)
        ordinals.append(opened)
        end = (end[0], end[1] + 1)
        reader = (end[0], end[1], reader[2])
      if not items:  # epoch done
        epoch, shard, record, block, taken = epoch + 1, 0, 0, 0, 0
        reader = None
        continue
      order = np.arange(len(items))
      if self.shuffle:
        order = np.random.default_rng([self.seed, 7, stream, epoch, block]).permutation(len(items))
      for i in range(taken, len(items)):
        item = items[order[i]]
        nxt = (epoch, shard, record, block, i + 1) if i + 1 < len(items) else (epoch, *end, block + 1, 0)
        if not isinstance(item, BadSample):
          try:
            rng = np.random.default_rng([self.seed, 13, stream, epoch, block, i])
            item = self.process(webdataset.to_example(item, self.caption_key), rng)
            item["epoch"] = np.int64(epoch)
            last_good = max(last_good, ordinals[order[i]])
          except BadSample as e:
            item = e
        yield item, nxt
      shard, record = end
      block, taken = block + 1, 0

  def batches(self, stream: int, pos: Sequence[int]) -> Iterator[tuple[dict, dict]]:
    """(batch of local_batch examples, info {'stream', 'pos', 'skipped', 'details'}) from stream `stream`."""
    rows, counts, details = [], bad_data.zero_counts(), {}
    for item, pos in self.examples(stream, pos):
      if isinstance(item, BadSample):
        bad_data.count(counts, item.reason)
        details.setdefault(item.reason, item.detail)
        continue
      rows.append(item)
      if len(rows) == self.local_batch:
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "key"}
        yield batch, {"stream": stream, "pos": tuple(int(p) for p in pos), "skipped": counts, "details": details}
        rows, counts, details = [], bad_data.zero_counts(), {}


class _HostBatches(grain.IterDataset):
  """The host's streams, round-robin, a batch each; grain's mp_prefetch slices the streams over workers."""

  def __init__(self, streams: ShardStreams, stream_ids: list[int], positions: list[tuple]):
    super().__init__()
    self._streams, self._ids, self._positions = streams, stream_ids, positions
    self._slice = slice(None)

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    self._slice = sl

  def __iter__(self) -> grain.DatasetIterator:
    return _HostBatchesIterator(self)


class _HostBatchesIterator(grain.DatasetIterator):
  def __init__(self, ds: _HostBatches):
    super().__init__()
    mine = list(range(len(ds._ids)))[ds._slice]
    self._gens = [ds._streams.batches(ds._ids[v], ds._positions[v]) for v in mine]
    self._next = 0

  def __next__(self):
    gen = self._gens[self._next]
    self._next = (self._next + 1) % len(self._gens)
    return next(gen)

  def get_state(self) -> dict:
    return {}  # the host iterator keeps the real state (positions travel with the batches)

  def set_state(self, state: dict) -> None:
    pass


def _allgather_rows(row: np.ndarray, process_count: int) -> list[list[int]] | None:
  """Every host's row (multi-host runs: one collective); None when hosts are only simulated."""
  import jax
  if jax.process_count() != process_count or process_count == 1:
    return None
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(row.astype(np.int32))).tolist()  # jax's default ints


class StreamIterator(grain.DatasetIterator):
  """This host's batches; state = next step and, per host, a row of stream positions (5 ints per stream) then
  skip counts (one per `skip_reasons` name): JSON, gathered from every host in multi-host runs."""

  def __init__(self, streams: ShardStreams, global_batch_size: int, process_index: int, process_count: int,
               streams_per_host: int, make_ds: Callable[[grain.IterDataset], grain.IterDataset]):
    self._streams, self._global_batch_size = streams, global_batch_size
    self._k, self._p, self._s, self._make_ds = process_index, process_count, streams_per_host, make_ds
    self._step = 0
    self._positions = [START] * streams_per_host
    self._skips = bad_data.SkipLog()
    self._inner = None
    super().__init__()

  def _start(self):
    first = self._step % self._s
    local = [(first + v) % self._s for v in range(self._s)]
    ids = [self._k * self._s + j for j in local]
    inner = iter(self._make_ds(_HostBatches(self._streams, ids, [self._positions[j] for j in local])))
    self._parents = (inner,)
    return inner

  def __next__(self) -> dict:
    self._assert_not_closed()
    if self._inner is None:
      self._inner = self._start()
    batch, info = next(self._inner)
    self._positions[info["stream"] - self._k * self._s] = tuple(info["pos"])
    self._skips.add(info["skipped"], info["details"])
    self._step += 1
    return batch

  def metrics(self) -> dict[str, int]:
    """data/skipped/<reason>: samples this host skipped so far (resumed runs included)."""
    return self._skips.metrics()

  def get_state(self) -> dict[str, Any]:
    row = np.concatenate([np.asarray(self._positions, np.int64).reshape(-1), self._skips.totals])
    rows = _allgather_rows(row, self._p)
    if rows is None:
      rows = [row.tolist() if k == self._k else None for k in range(self._p)]
    return {"next_step": self._step, "global_batch_size": self._global_batch_size,
            "process_count": self._p, "streams_per_host": self._s, "skip_reasons": list(bad_data.REASONS),
            "hosts": rows}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("global_batch_size") != self._global_batch_size:
      raise ValueError(f"data iterator state is for global batch size {state.get('global_batch_size')}, "
                       f"not {self._global_batch_size}; restore with the batch size it was saved with")
    if "hosts" not in state:
      raise ValueError("data iterator state is not from a streaming (webdataset) source; resume with the "
                       "config.data it was saved with")
    if (state["process_count"], state["streams_per_host"]) != (self._p, self._s):
      raise ValueError(f"data iterator state is for {state['process_count']} hosts x "
                       f"{state['streams_per_host']} streams, not {self._p} x {self._s}; resume with the same "
                       "host count and config.data.streams_per_host")
    row = state["hosts"][self._k]
    if row is None:
      raise ValueError(f"data iterator state has no stream positions for host {self._k}")
    n = 5 * self._s
    if self._inner is not None:
      self._inner.close()
      self._inner, self._parents = None, ()
    self._positions = [tuple(row[i:i + 5]) for i in range(0, n, 5)]
    self._skips = bad_data.SkipLog(dict(zip(state.get("skip_reasons", bad_data.REASONS), row[n:])))
    self._step = int(state["next_step"])
