"""Streaming (not random-access) training input: webdataset shards read by a fixed set of reader streams.

Every epoch the shard list is reshuffled with the seed and cut into groups of `mix_shards` consecutive shards;
reader stream s of T = hosts x streams_per_host reads groups s, s+T, ... of that epoch, so hosts and streams
never overlap and each epoch reads every shard once. A stream reads its group's shards together, in blocks of
`rounds` rounds (rounds = shuffle_block // mix_shards), each round one item from every shard still open; the
block is then permuted, stratified: each shard's items are permuted among its own places and every round's
shard order is permuted. So any 2 x mix_shards - 1 consecutive items of a block hold one item of every open
shard, and a host batch (b >= 2 x mix_shards - 1 rows) draws from all mix_shards shards of its group. Items
become examples (bad ones are skipped and counted). Host batch n comes from local stream n mod S, whole, so the
host's batch sequence does not depend on how many grain worker processes (any divisor of S) decode it.

A block, its order and its augmentation depend on (seed, epoch, group, block) only, never on the host or
stream count. A stream's position is (epoch, entry, block, taken, offsets[mix_shards]): `entry` indexes the
stream's list of groups this epoch; `offsets` are the records of the group's shards at the block's start
(-1: shard done), `taken` the items of the block consumed. Every batch carries its stream's position after
it, so the iterator state is exact even while workers read ahead, and a resumed stream re-reads only the
current block's raw bytes. Resuming on another host or stream count (`replan`) hands the unfinished groups,
each at its exact position, and the unread groups to the new streams: within an epoch no sample is read twice
or skipped; a group resumed that way is read on by one stream as before.
"""
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from hyperclip_jax.data import bad_data, pixels
from hyperclip_jax.data import pp as pp_lib
from hyperclip_jax.data.bad_data import BadSample
from hyperclip_jax.data.sources import webdataset


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


Entry = tuple  # (group, block, taken, *offsets): where a stream starts reading a group


class ShardStreams:
  """What every reader stream shares: the shard list, seeds, mixing, per-sample processing and the plans of
  epochs resumed on another host or stream count ({epoch: [entries of global stream t] for t in range(T)})."""

  def __init__(self, pattern: str, shards: Sequence[str], total_streams: int, seed: int, shuffle: bool,
               shuffle_block: int, mix_shards: int, caption_key: str, process: Preprocess, local_batch: int):
    self.pattern, self.shards, self.total_streams = pattern, list(shards), total_streams
    self.seed, self.shuffle, self.mix = seed, shuffle, mix_shards
    self.rounds = max(1, shuffle_block // mix_shards) if shuffle else 1
    self.n_groups = -(-len(self.shards) // mix_shards)
    self.caption_key, self.process, self.local_batch = caption_key, process, local_batch
    self.plans: dict[int, list[list[Entry]]] = {}

  def group_shards(self, epoch: int, group: int) -> list[str]:
    order = np.arange(len(self.shards))
    if self.shuffle:
      order = np.random.default_rng([self.seed, 11, epoch]).permutation(len(self.shards))
    return [self.shards[i] for i in order[group * self.mix:(group + 1) * self.mix]]

  def work(self, epoch: int, stream: int, total: int | None = None,
           plans: dict[int, list[list[Entry]]] | None = None) -> list[Entry]:
    """The groups global stream `stream` of `total` reads in `epoch`, each with its start position."""
    plans = self.plans if plans is None else plans
    if epoch in plans:
      return [tuple(e) for e in plans[epoch][stream]]
    total = total or self.total_streams
    return [(g, 0, 0, *[0] * self.mix) for g in range(stream, self.n_groups, total)]

  def start(self, stream: int) -> tuple:
    """Position of a stream that has read nothing yet."""
    return self.position(0, 0, stream)

  def position(self, epoch: int, entry: int, stream: int) -> tuple:
    work = self.work(epoch, stream)
    return (epoch, entry, *(work[entry][1:] if entry < len(work) else (0, 0, *[0] * self.mix)))

  def _block(self, shards: list[str], offsets: list[int], readers: dict) -> tuple[list, list[int], int]:
    """Items [(item, slot)] of the block starting at `offsets`, the offsets after it, shards finished in it."""
    offsets, items, finished = list(offsets), [], 0
    for _ in range(self.rounds):
      progressed = False
      for slot, path in enumerate(shards):
        if offsets[slot] < 0:
          continue
        if slot not in readers or readers[slot][0] != offsets[slot]:
          readers[slot] = (offsets[slot], webdataset.read_shard(path, skip=offsets[slot]))
        item = next(readers[slot][1], None)
        if item is None:
          offsets[slot], finished = -1, finished + 1
          readers.pop(slot)
          continue
        offsets[slot] += 1
        readers[slot] = (offsets[slot], readers[slot][1])
        items.append((item, slot))
        progressed = True
      if not progressed:
        break
    return items, offsets, finished

  def _order(self, items: list, epoch: int, group: int, block: int) -> list[int]:
    """Stratified permutation of a block: rounds stay in place, each shard's items and each round's shard
    order are permuted."""
    if not self.shuffle:
      return list(range(len(items)))
    rng = np.random.default_rng([self.seed, 7, epoch, group, block])
    by_slot: dict[int, list[int]] = {}
    for i, (_, slot) in enumerate(items):
      by_slot.setdefault(slot, []).append(i)
    for slot in sorted(by_slot):
      by_slot[slot] = [by_slot[slot][k] for k in rng.permutation(len(by_slot[slot]))]
    rounds: dict[int, list[int]] = {}
    for slot in sorted(by_slot):
      for r, i in enumerate(by_slot[slot]):
        rounds.setdefault(r, []).append(i)
    return [rounds[r][k] for r in sorted(rounds) for k in rng.permutation(len(rounds[r]))]

  def examples(self, stream: int, pos: Sequence[int]) -> Iterator[tuple[dict | BadSample, tuple]]:
    """(example or BadSample, position after it), endlessly, from position `pos` of global stream `stream`."""
    epoch, entry, block, taken, *offsets = (int(p) for p in pos)
    readers: dict = {}  # slot -> (next record, open generator): continues a shard across blocks
    finished_since_good = 0
    while True:
      work = self.work(epoch, stream)
      if entry >= len(work):  # epoch done
        epoch, entry = epoch + 1, 0
        _, _, block, taken, *offsets = self.position(epoch, 0, stream)
        readers = {}
        continue
      if finished_since_good > len(self.shards) + self.mix:
        raise ValueError(f"config.data.pattern={self.pattern!r} yields no usable sample: {len(self.shards)} "
                         "shards in a row gave none (see the data/skipped warnings); check the shards")
      group = work[entry][0]
      items, after, finished = self._block(self.group_shards(epoch, group), offsets, readers)
      finished_since_good += finished
      if not items:  # group done
        entry += 1
        _, _, block, taken, *offsets = self.position(epoch, entry, stream)
        readers = {}
        continue
      order = self._order(items, epoch, group, block)
      for i in range(taken, len(order)):
        item = items[order[i]][0]
        nxt = (epoch, entry, block, i + 1, *offsets) if i + 1 < len(order) else (epoch, entry, block + 1, 0, *after)
        if not isinstance(item, BadSample):
          try:
            rng = np.random.default_rng([self.seed, 13, epoch, group, block, i])
            item = self.process(webdataset.to_example(item, self.caption_key), rng)
            item["epoch"] = np.int64(epoch)
            finished_since_good = 0
          except BadSample as e:
            item = e
        yield item, nxt
      offsets, block, taken = after, block + 1, 0

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


def replan(streams: ShardStreams, positions: list[tuple], old_total: int,
           old_plans: dict[int, list[list[Entry]]]) -> dict[int, list[list[Entry]]]:
  """Plans and start positions for streams.total_streams streams that continue `positions` (of old_total
  global streams, under old_plans): every epoch some old stream has not finished is split anew, unfinished
  groups first (each at its exact position, so it is read on without a repeat or a gap), then unread groups;
  new stream t takes every T-th of them and starts at its first, in the oldest of those epochs. Later epochs
  use the ordinary assignment."""
  epochs = [int(p[0]) for p in positions]
  plans = {}
  for epoch in range(min(epochs), max(epochs) + 1):
    started, unread = [], []
    for t, pos in enumerate(positions):
      work = streams.work(epoch, t, old_total, old_plans)
      if epochs[t] > epoch:
        continue
      if epochs[t] == epoch:
        entry = int(pos[1])
        if entry < len(work):
          started.append((work[entry][0], *(int(p) for p in pos[2:])))
        work = work[entry + 1:]
      for e in work:
        (unread if not any(e[1:]) else started).append(tuple(e))
    remaining = started + sorted(unread)
    plans[epoch] = [remaining[t::streams.total_streams] for t in range(streams.total_streams)]
  return plans


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
  if jax.process_count() != process_count or process_count == 1:
    return None
  return np.asarray(multihost_utils.process_allgather(row.astype(np.int32))).tolist()  # jax's default ints


class StreamIterator(grain.DatasetIterator):
  """This host's batches; state = next step, per host a row of stream positions (4 + mix_shards ints per
  stream) then skip counts (one per `skip_reasons` name), and the plans of epochs resumed on another host or
  stream count: JSON, gathered from every host in multi-host runs."""

  def __init__(self, streams: ShardStreams, global_batch_size: int, process_index: int, process_count: int,
               streams_per_host: int, make_ds: Callable[[grain.IterDataset], grain.IterDataset]):
    self._streams, self._global_batch_size = streams, global_batch_size
    self._k, self._p, self._s, self._make_ds = process_index, process_count, streams_per_host, make_ds
    self._step = 0
    self._positions = [streams.start(self._k * self._s + j) for j in range(streams_per_host)]
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
    plans = self._current_plans(rows, self._s)
    return {"next_step": self._step, "global_batch_size": self._global_batch_size,
            "process_count": self._p, "streams_per_host": self._s, "mix_shards": self._streams.mix,
            "rounds": self._streams.rounds, "skip_reasons": list(bad_data.REASONS), "hosts": rows,
            "plans": {str(e): [[list(map(int, x)) for x in t] for t in p] for e, p in plans.items()}}

  def _current_plans(self, rows: list, streams_per_host: int) -> dict[int, list[list[Entry]]]:
    """The plans, less those of epochs every stream has finished (known when every host's row is)."""
    plans = self._streams.plans
    if all(r is not None for r in rows):
      width = 4 + self._streams.mix
      oldest = min(r[i] for r in rows for i in range(0, width * streams_per_host, width))
      plans = {e: p for e, p in plans.items() if e >= oldest}
    return plans

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("global_batch_size") != self._global_batch_size:
      raise ValueError(f"data iterator state is for global batch size {state.get('global_batch_size')}, "
                       f"not {self._global_batch_size}; restore with the batch size it was saved with")
    if "hosts" not in state:
      raise ValueError("data iterator state is not from a streaming (webdataset) source; resume with the "
                       "config.data it was saved with")
    mix = self._streams.mix
    if "mix_shards" not in state:
      raise ValueError("data iterator state is from a webdataset reader without shard mixing (5 numbers per "
                       "stream); this version cannot continue it: resume those runs with the version that saved "
                       "them")
    if (state.get("mix_shards"), state.get("rounds")) != (mix, self._streams.rounds):
      raise ValueError(f"data iterator state is for config.data.mix_shards={state.get('mix_shards')} with "
                       f"{state.get('rounds')} rounds per block, not {mix} with {self._streams.rounds}; resume "
                       "with the mix_shards, shuffle_block and shuffle it was saved with")
    width, old_p, old_s = 4 + mix, state["process_count"], state["streams_per_host"]
    plans = {int(e): [[tuple(x) for x in t] for t in p] for e, p in state.get("plans", {}).items()}
    reasons = state.get("skip_reasons", bad_data.REASONS)
    if self._inner is not None:
      self._inner.close()
      self._inner, self._parents = None, ()
    if (old_p, old_s) == (self._p, self._s):
      row = state["hosts"][self._k]
      if row is None:
        raise ValueError(f"data iterator state has no stream positions for host {self._k}")
      self._streams.plans = plans
      self._streams.plans = self._current_plans(state["hosts"], self._s)
      self._positions = [tuple(row[i:i + width]) for i in range(0, width * self._s, width)]
      self._skips = bad_data.SkipLog(dict(zip(reasons, row[width * self._s:])))
    else:
      missing = [k for k, r in enumerate(state["hosts"]) if r is None]
      if missing:
        raise ValueError(f"data iterator state of {old_p} hosts lacks the stream positions of host(s) {missing}; "
                         "resuming on another host or stream count needs every host's row (multi-host saves "
                         "gather them)")
      old = [tuple(r[i:i + width]) for r in state["hosts"] for i in range(0, width * old_s, width)]
      self._streams.plans = replan(self._streams, old, old_p * old_s, plans)
      oldest = min(p[0] for p in old)
      self._positions = [self._streams.position(oldest, 0, self._k * self._s + j) for j in range(self._s)]
      # skip counts so far: every old host's, kept once (on host 0) so that totals over hosts stay right
      totals = np.sum([r[width * old_s:] for r in state["hosts"]], axis=0) if self._k == 0 else None
      self._skips = bad_data.SkipLog(dict(zip(reasons, totals)) if totals is not None else None)
    self._step = int(state["next_step"])
