"""grain input pipeline: deterministic, checkpointable training batches and zero-shot eval batches.

Training stream: global position g = step * global_batch + row. Host k (of P) renders only rows
[k*b, (k+1)*b) of every global batch (b = global_batch / P), so the host slices are disjoint and, concatenated
in host order, equal the single-host batch. Position g reads source item g (infinite sources such as the demo)
or item perm_epoch(g mod n) of a finite source (stateless per-epoch reshuffle). The iterator's state is the
next step number, so `it.set_state(state)` resumes with exactly the next batch, at any worker count.

config.data fields (an ml_collections ConfigDict; missing optional fields take these defaults):
  name: str = 'demo'              source (see data/sources: SOURCES)
  image_size: int = 64            demo render size (pixels)
  max_len: int = 32               tokens per caption, EOS included (bytes: 64 fits 91% of one-object demo
                                  captions, 128 fits 99.8% of all; longer ones are truncated)
  two_objects_prob: float = 0.3   demo: share of two-object scenes
  partial_caption_prob: float = 0.2  demo: share of captions naming only some attributes
  task_sets: float = 0.0          demo: share of task-shaped conditioning sets (one attribute, distinct values,
                                  class-prompt captions; same-class rows are positives: the batch then has
                                  'positive_id' i32 [b]; data/sources/demo_task_sets.py, docs/data.md)
  shuffle: bool = True            finite sources: reshuffle every epoch (the demo stream is already random)
  worker_count: int | str = 0     grain worker processes (mp_prefetch); 0 renders in this process; 'auto' =
                                  the cores this process may use less 2 for the main loop (data/workers.py)
  worker_buffer_size: int = 2     batches each worker keeps ready
  read_threads: int = 1           background threads of this process (each makes whole batches); 0 = inline
  prefetch_batches: int = 2       batches read ahead in this process
 real data (see docs/data.md):
  name: 'webdataset' | 'manifest' | 'tfds'
  pattern: str                    webdataset shards, e.g. 'gs://b/shards/{00000000..00012556}.tar'
  manifest: str                   a .jsonl / .csv manifest (name='manifest')
  caption_key: str                webdataset: 'txt' or 'json:FIELD'; manifest: the caption column
  pp: str = ''                    train preprocessing (data/pp.py); '' = DEFAULT_PP at image_size / max_len
  shuffle_block: int = 256        webdataset: items permuted together within a reader stream (held in memory)
  mix_shards: int = 1             webdataset: shards each reader stream reads at once, interleaved; a host batch
                                  of >= 2 x mix_shards - 1 rows draws from all of them (data/streaming.py)
  streams_per_host: int = 0       webdataset reader streams per host; 0 = max(worker_count, 1). The batch
                                  order depends on it (and the host count), not on worker_count
  tfds_name, tfds_split, tfds_data_dir, tfds_image_key, tfds_text_key, tfds_label_key: see sources/tfds.py
Bad samples of these sources are skipped and counted: `it.metrics()` gives data/skipped/<reason>.
"""
from typing import Any, Iterator

import grain
import grain.experimental
import numpy as np
from absl import flags as absl_flags

from hyperclip_jax.data import bad_data, pixels, sources, streaming, workers
from hyperclip_jax.data import pp as pp_lib
from hyperclip_jax.data.sources import demo_task_sets, webdataset
from hyperclip_jax.data.sources.demo import ZeroShotTask
from hyperclip_jax.data.tokenizers import Tokenizer

_INFINITE = 2**40  # sources at least this long are read in order, never reshuffled
_STREAM_LEN = 2**62
DEFAULT_PP = "decode|resize({size})|value_range(-1, 1)|tokenize|keep('image', 'text')"


def train_pp(config_data: Any) -> str:
  """config.data.pp, or the default decode|resize|value_range|tokenize at config.data.image_size."""
  return config_data.get("pp", "") or DEFAULT_PP.format(size=config_data.get("image_size", 64))


def train_pixel_affine(config_data: Any) -> pixels.PixelAffine:
  """What the train step applies to the batch's uint8 images: the pp spec's final value_range (procedural
  sources render uint8 with the models' [-1, 1] convention). A spec that keeps its value_range on the host
  gives float32 batches, which the affine passes through."""
  if config_data.get("name", "demo") == "demo":  # rendered pixels, no pp
    return pixels.DEFAULT
  return pixels.split_device_affine(train_pp(config_data))[1] or pixels.DEFAULT


def to_model_image(image: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, 3] -> float32 in [-1, 1] (the value_range(-1, 1) convention)."""
  return image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


class _HostPosition:
  """Local element j of host k -> global stream position g (host k's rows of each global batch)."""

  def __init__(self, global_batch: int, local_batch: int, process_index: int):
    self.global_batch, self.local_batch, self.offset = global_batch, local_batch, process_index * local_batch

  def __call__(self, j: int) -> int:
    step, row = divmod(int(j), self.local_batch)
    return step * self.global_batch + self.offset + row


class _ReadExample:
  """Global position -> model inputs {'image': u8 [H, W, 3], 'text': i32 [L], 'index': i64}."""

  def __init__(self, source: Any, tokenizer: Tokenizer, max_len: int, shuffle: bool, seed: int,
               global_batch: int = 0):
    self.source, self.tokenizer, self.max_len, self.global_batch = source, tokenizer, max_len, global_batch
    self.n = len(source)
    self.shuffle, self.seed = shuffle and self.n < _INFINITE, seed

  def source_index(self, g: int) -> int:
    if self.n >= _INFINITE:
      return g
    epoch, i = divmod(g, self.n)
    if not self.shuffle or self.n == 1:
      return i
    epoch_seed = (self.seed * 1_000_003 + epoch) % 2**31  # index_shuffle takes a 32-bit seed
    return grain.experimental.index_shuffle(i, max_index=self.n - 1, seed=epoch_seed, rounds=4)

  def __call__(self, g: int) -> dict:
    example = self.source[self.source_index(g)]
    out = {
        "image": np.asarray(example["image"], np.uint8),
        "text": self.tokenizer.encode([example["caption"]], self.max_len)[0],
        "index": np.int64(g),
    }
    if "positive_row" in example:  # task-shaped sets: ids by global batch row, unique across hosts
      out["positive_id"] = np.int32(example["positive_row"] % self.global_batch)
    return out


class _ReadRawExample(_ReadExample):
  """As _ReadExample for sources of encoded images (config.data.pp decodes them). A bad item is counted in
  '_skipped' (at its own position, so once per epoch) and replaced by the next good item of the source."""

  def __init__(self, source: Any, preprocess: streaming.Preprocess, shuffle: bool, seed: int):
    super().__init__(source, preprocess.tokenizer, preprocess.max_len, shuffle, seed)
    self.preprocess = preprocess

  def __call__(self, g: int) -> dict:
    counts = bad_data.zero_counts()
    i = self.source_index(g)
    for attempt in range(self.n):
      try:
        example = self.preprocess(self.source[(i + attempt) % self.n], np.random.default_rng([self.seed, 17, g]))
        return {"image": example["image"], "text": example["text"], "index": np.int64(g), "_skipped": counts}
      except bad_data.BadSample as e:
        if attempt == 0:  # counted at its own position only: once per bad item per epoch
          bad_data.count(counts, e.reason)
    raise ValueError(f"config.data source {getattr(self.source, 'path', '')!s} yields no usable sample: all "
                     f"{self.n} items are bad ({dict(zip(bad_data.REASONS, counts.tolist()))})")


class TrainIterator(grain.DatasetIterator):
  """grain iterator over the batches of one host. Its state is just the next step number (a JSON dict), and
  every batch is a pure function of its step, so a checkpoint resumes exactly, under any worker or thread
  count; restoring it under another global batch size is refused."""

  def __init__(self, batches: grain.MapDataset, global_batch_size: int, read_options: grain.ReadOptions,
               mp_options: grain.MultiprocessingOptions | None):
    self._batches, self._global_batch_size = batches, global_batch_size
    self._read_options, self._mp_options = read_options, mp_options
    self._step, self._inner = 0, None
    self._skips = None  # a SkipLog once a batch reports skipped samples (sources of encoded images)
    super().__init__()

  def _start(self) -> grain.DatasetIterator:
    ds = self._batches[self._step:].to_iter_dataset(self._read_options)
    if self._mp_options is not None:
      ds = ds.mp_prefetch(self._mp_options)
    inner = iter(ds)
    self._parents = (inner,)  # so close() reaches grain's threads and worker processes
    return inner

  def __next__(self) -> dict:
    self._assert_not_closed()
    if self._inner is None:
      self._inner = self._start()
    batch = next(self._inner)
    self._step += 1
    if "_skipped" in batch:
      batch = dict(batch)
      self._skips = self._skips or bad_data.SkipLog()
      self._skips.add(batch.pop("_skipped"))
    return batch

  def metrics(self) -> dict[str, int]:
    """data/skipped/<reason> counts of this host (none for the procedural demo)."""
    return self._skips.metrics() if self._skips is not None else {}

  def get_state(self) -> dict[str, Any]:
    state = {"next_step": self._step, "global_batch_size": self._global_batch_size}
    if self._skips is not None:
      state["skipped"] = self._skips.state()
    return state

  def set_state(self, state: dict[str, int]) -> None:
    if state.get("global_batch_size") != self._global_batch_size:
      raise ValueError(f"data iterator state is for global batch size {state.get('global_batch_size')}, "
                       f"not {self._global_batch_size}; restore with the batch size it was saved with")
    if self._inner is not None:
      self._inner.close()
      self._inner, self._parents = None, ()
    self._step = int(state["next_step"])
    if "skipped" in state:
      self._skips = bad_data.SkipLog(state["skipped"])


def make_train_iterator(config_data: Any, tokenizer: Tokenizer, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        set_size: int | None = None) -> grain.DatasetIterator:
  """Endless iterator of this host's slice of each global batch:
  {'image': u8 [b, H, W, 3], 'text': i32 [b, L], 'index': i64 [b]}, b = global / process_count. The images
  are pixels: the train step turns them into model inputs with train_pixel_affine(config_data) (a pp spec
  whose value_range cannot move to the device gives float32 images, which that affine passes through).
  `it.get_state()` / `it.set_state(state)` checkpoint it (grain/Orbax protocol). config_data.task_sets > 0
  (demo only) needs `set_size` (config.model.hyper.set_size) and adds 'positive_id' i32 [b].
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the process "
                     f"count {process_count}")
  max_len = config_data.get("max_len", 32)
  worker_count = workers.resolve_worker_count(config_data.get("worker_count", 0))
  local_batch = global_batch_size // process_count
  read_options = grain.ReadOptions(num_threads=config_data.get("read_threads", 1),
                                   prefetch_buffer_size=config_data.get("prefetch_batches", 2))
  mp_options = None
  if worker_count > 0:
    if not absl_flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; use their defaults
      absl_flags.FLAGS.mark_as_parsed()
    mp_options = grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=config_data.get("worker_buffer_size", 2))
  name = config_data.get("name", "demo")
  task_sets = config_data.get("task_sets", 0.0)
  if task_sets:
    _check_task_sets(name, task_sets, set_size, global_batch_size)
  if name in sources.STREAMING:
    return _make_stream_iterator(config_data, tokenizer, global_batch_size, seed, process_index, process_count,
                                 read_options, mp_options)
  source = sources.get_source(config_data, seed)
  if task_sets:
    source = demo_task_sets.TaskSetSource(source, set_size, task_sets)
  shuffle = config_data.get("shuffle", True)
  if getattr(source, "raw_examples", False):
    preprocess = streaming.Preprocess(train_pp(config_data), tokenizer, max_len, config_data.get("image_size", 64))
    read = _ReadRawExample(source, preprocess, shuffle, seed)
  else:
    read = _ReadExample(source, tokenizer, max_len, shuffle, seed, global_batch_size)
  batches = (grain.MapDataset.range(_STREAM_LEN)
             .map(_HostPosition(global_batch_size, local_batch, process_index))
             .map(read)
             .batch(local_batch, drop_remainder=True))
  return TrainIterator(batches, global_batch_size, read_options, mp_options)


def _check_task_sets(name: str, task_sets: float, set_size: int | None, global_batch: int) -> None:
  if name != "demo":
    raise ValueError(f"config.data.task_sets={task_sets} is implemented for the demo source only, not "
                     f"name={name!r}; see docs/data.md (task-shaped sets) for how it maps to real data")
  if not set_size or global_batch % set_size:
    raise ValueError(f"config.data.task_sets needs the global batch {global_batch} to be whole groups of "
                     f"set_size={set_size!r} (pass make_train_iterator(set_size=config.model.hyper.set_size))")


def _make_stream_iterator(config_data: Any, tokenizer: Tokenizer, global_batch_size: int, seed: int,
                          process_index: int, process_count: int, read_options: grain.ReadOptions,
                          mp_options: grain.MultiprocessingOptions | None) -> streaming.StreamIterator:
  pattern = config_data.get("pattern", "")
  if not pattern:
    raise ValueError("config.data.name='webdataset' needs config.data.pattern, e.g. 'shards/{00000..00099}.tar'")
  shards = webdataset.expand_pattern(pattern)
  if not webdataset.any_exists(shards[:8]):  # a cheap look at the head: listing 10^4 remote shards is not
    raise ValueError(f"config.data.pattern={pattern!r} matches 0 shard files (looked at {shards[:2]}...); "
                     "check the path and the {first..last} range")
  n_workers = mp_options.num_workers if mp_options else 0
  per_host = config_data.get("streams_per_host", 0) or max(n_workers, 1)
  if n_workers and per_host % n_workers:
    raise ValueError(f"config.data.streams_per_host={per_host} must be a multiple of the worker count "
                     f"{n_workers} (config.data.worker_count={config_data.get('worker_count')!r}; each worker "
                     "decodes whole streams)")
  total = per_host * process_count
  mix = config_data.get("mix_shards", 1)
  if mix < 1:
    raise ValueError(f"config.data.mix_shards={mix} must be >= 1 (shards each reader stream interleaves)")
  if len(shards) < total * mix:
    raise ValueError(f"config.data.pattern={pattern!r} matches {len(shards)} shard(s), fewer than the {total} "
                     f"reader streams ({process_count} host(s) x streams_per_host={per_host}) x mix_shards={mix} "
                     "need; write more shards or lower config.data.mix_shards / streams_per_host")
  max_len = config_data.get("max_len", 32)
  preprocess = streaming.Preprocess(train_pp(config_data), tokenizer, max_len, config_data.get("image_size", 64))
  shard_streams = streaming.ShardStreams(
      pattern, shards, total, seed, config_data.get("shuffle", True), config_data.get("shuffle_block", 256), mix,
      config_data.get("caption_key", "txt") or "txt", preprocess, global_batch_size // process_count)

  def make_ds(ds: grain.IterDataset) -> grain.IterDataset:
    if mp_options is not None:
      return ds.mp_prefetch(mp_options)
    if read_options.prefetch_buffer_size > 0 and read_options.num_threads > 0:
      return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=read_options.prefetch_buffer_size)
    return ds

  return streaming.StreamIterator(shard_streams, global_batch_size, process_index, process_count, per_host,
                                  make_ds)


def make_eval_batches(task: ZeroShotTask, batch_size: int, pad_last: bool = False, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images f32 [b, H, W, 3] in [-1, 1], labels i32 [b]) over task's n_eval examples, in order.

  Each host gets rows [k*b, (k+1)*b) of every global batch (b = batch_size / process_count). The last batch
  is smaller unless pad_last, which fills it with zero images labelled -1 (padding: ignore in metrics).
  """
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"eval batch size {batch_size} must be a positive multiple of the process count "
                     f"{process_count}")
  if process_count > 1 and not pad_last:
    raise ValueError("make_eval_batches with several processes needs pad_last=True (equal batch counts)")
  local = batch_size // process_count
  for start in range(0, task.n_eval, batch_size):
    rows = range(start + process_index * local, start + (process_index + 1) * local)
    examples = [task.sample_fn(i) for i in rows if i < task.n_eval]
    n_pad = local - len(examples) if pad_last else 0
    if n_pad:
      blank = np.zeros_like(task.sample_fn(0)[0])
      examples += [(blank, -1)] * n_pad
    images = to_model_image(np.stack([img for img, _ in examples]))  # [b, H, W, 3]
    if n_pad:
      images[len(examples) - n_pad:] = 0.0
    yield images, np.asarray([label for _, label in examples], np.int32)


def make_prompt_tokens(task: ZeroShotTask, tokenizer: Tokenizer, max_len: int) -> np.ndarray:
  """Tokenized prompts of every class x template: int32 [num_classes, num_templates, max_len]."""
  prompts = task.prompts()
  flat = [p for per_class in prompts for p in per_class]
  return tokenizer.encode(flat, max_len).reshape(len(prompts), len(task.templates), max_len)


EVAL_PP = "decode|resize_small({size})|central_crop({size})|value_range(-1, 1)"


def make_source_eval_batches(source: Any, image_size: int, batch_size: int, pp: str = "", n_eval: int = 0
                             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images f32 [b, S, S, 3] in [-1, 1], labels i32 [b]) over a labelled source (e.g. sources.tfds.TfdsSource:
  imagenet2012 validation), in order, the first n_eval items (0 = all). Bad items are skipped and logged
  once per reason; the last batch may be smaller. Use with evaluators' ClassificationTask(batches=...)."""
  fn = pp_lib.build(pp or EVAL_PP.format(size=image_size))
  skips, rng = bad_data.SkipLog(), np.random.default_rng(0)
  images, labels = [], []
  for i in range(min(n_eval or len(source), len(source))):
    try:
      example = source[i]
      images.append(np.asarray(fn({"image": example["image"]}, rng)["image"], np.float32))
      labels.append(int(example["label"]))
    except bad_data.BadSample as e:
      counts = bad_data.zero_counts()
      bad_data.count(counts, e.reason)
      skips.add(counts, {e.reason: e.detail})
    if len(images) == batch_size:
      yield np.stack(images), np.asarray(labels, np.int32)
      images, labels = [], []
  if images:
    yield np.stack(images), np.asarray(labels, np.int32)
