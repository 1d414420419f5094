"""grain input pipeline: batch layout, host slicing, exact resume, finite-source epochs, eval batches."""
import os

import ml_collections
import numpy as np
import pytest

from hyperclip_jax.data import input_pipeline, pixels, sources
from hyperclip_jax.data.sources.demo import DemoSource, demo_tasks
from hyperclip_jax.data.tokenizers import get_tokenizer


def _config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(name="demo", image_size=32, max_len=24, two_objects_prob=0.3, worker_count=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _take(it, n: int) -> list[dict]:
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def test_batches_have_model_input_shapes_and_ranges():
  tok = get_tokenizer("bytes")
  it = input_pipeline.make_train_iterator(_config(), tok, global_batch_size=4, seed=0)
  first, second = _take(it, 2)
  assert first["image"].shape == (4, 32, 32, 3) and first["image"].dtype == np.uint8  # pixels: [-1, 1] on device
  assert first["text"].shape == (4, 24) and first["text"].dtype == np.int32
  assert first["index"].dtype == np.int64
  np.testing.assert_array_equal(first["index"], [0, 1, 2, 3])
  np.testing.assert_array_equal(second["index"], [4, 5, 6, 7])
  assert first["image"].min() < 128 < first["image"].max()
  source = DemoSource(32, seed=0)
  np.testing.assert_array_equal(first["image"][2], source[2]["image"])
  assert input_pipeline.train_pixel_affine(_config()) == pixels.DEFAULT
  assert tok.decode(second["text"][1:2]) == [source[5]["caption"][:23]]


def test_host_slices_are_disjoint_and_concatenate_to_the_single_host_batch():
  tok = get_tokenizer("bytes")
  single = _take(input_pipeline.make_train_iterator(_config(), tok, 8, seed=1), 2)
  for count in (2, 4):
    hosts = [_take(input_pipeline.make_train_iterator(_config(), tok, 8, 1, k, count), 2) for k in range(count)]
    for step in range(2):
      assert all(h[step]["image"].shape[0] == 8 // count for h in hosts)
      for key in ("image", "text", "index"):
        np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), single[step][key])


def test_resume_from_state_gives_exactly_the_next_batches():
  tok = get_tokenizer("bytes")
  it = input_pipeline.make_train_iterator(_config(), tok, 4, seed=2)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 2)
  restored = input_pipeline.make_train_iterator(_config(), tok, 4, seed=2)
  restored.set_state(state)
  for want, got in zip(expected, _take(restored, 2)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  np.testing.assert_array_equal(expected[0]["index"], [12, 13, 14, 15])
  with pytest.raises(ValueError, match="global batch size 4"):
    input_pipeline.make_train_iterator(_config(), tok, 8, seed=2).set_state(state)


def test_state_saved_with_worker_processes_resumes_in_process():
  tok = get_tokenizer("bytes")
  it = input_pipeline.make_train_iterator(_config(worker_count=1), tok, 4, seed=3)
  try:
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 1)[0]
  finally:
    it.close()
  restored = input_pipeline.make_train_iterator(_config(worker_count=0, read_threads=0), tok, 4, seed=3)
  restored.set_state(state)
  got = _take(restored, 1)[0]
  np.testing.assert_array_equal(got["index"], [8, 9, 10, 11])
  np.testing.assert_array_equal(got["image"], expected["image"])


class _TinySource:
  """10 blank images whose caption is their own index."""

  def __len__(self) -> int:
    return 10

  def __getitem__(self, i: int) -> dict:
    return {"image": np.zeros((8, 8, 3), np.uint8), "caption": str(i)}


def test_finite_source_is_reshuffled_each_epoch(monkeypatch):
  monkeypatch.setitem(sources.SOURCES, "tiny", lambda config_data, seed: _TinySource())
  tok = get_tokenizer("bytes")
  it = input_pipeline.make_train_iterator(_config(name="tiny"), tok, 5, seed=0)
  epochs = [[int(c) for b in _take(it, 2) for c in tok.decode(b["text"])] for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(10))


def test_bad_arguments_raise_value_error():
  tok = get_tokenizer("bytes")
  with pytest.raises(ValueError, match="multiple of the process count"):
    input_pipeline.make_train_iterator(_config(), tok, 6, 0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    input_pipeline.make_train_iterator(_config(), tok, 8, 0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="config.data.name='laion'"):
    input_pipeline.make_train_iterator(_config(name="laion"), tok, 8, 0)


def test_eval_batches_cover_the_task_in_order_with_optional_padding():
  task = demo_tasks(32, n_eval=10)["size_position"]
  batches = list(input_pipeline.make_eval_batches(task, batch_size=4))
  assert [b[0].shape for b in batches] == [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
  labels = np.concatenate([b[1] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(10) % 10)
  assert labels.dtype == np.int32 and all(-1.0 <= b[0].min() and b[0].max() <= 1.0 for b in batches)
  np.testing.assert_allclose(batches[2][0][1], task.sample_fn(9)[0] / 127.5 - 1.0, atol=1e-6)

  padded = list(input_pipeline.make_eval_batches(task, batch_size=4, pad_last=True))
  np.testing.assert_array_equal(padded[2][1], [8, 9, -1, -1])
  assert not padded[2][0][2:].any()
  hosts = [list(input_pipeline.make_eval_batches(task, 4, True, k, 2)) for k in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([h[step][1] for h in hosts]), padded[step][1])
    np.testing.assert_array_equal(np.concatenate([h[step][0] for h in hosts]), padded[step][0])


def test_prompt_tokens_are_classes_by_templates():
  task = demo_tasks(32, n_eval=4)["colour"]
  tok = get_tokenizer("bytes")
  tokens = input_pipeline.make_prompt_tokens(task, tok, max_len=32)
  assert tokens.shape == (8, len(task.templates), 32)
  assert tok.decode(tokens[1, 0:1]) == [task.templates[0].format("green")]


def test_worker_count_auto_leaves_cores_for_the_main_loop(monkeypatch):
  from hyperclip_jax.data import workers
  monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
  assert workers.resolve_worker_count("auto") == 6 - workers.RESERVED_CORES
  assert workers.resolve_worker_count("auto", cores=2) == 0  # too few cores: decode in the main process
  assert workers.resolve_worker_count("8") == workers.resolve_worker_count(8) == 8  # a command-line override
  for bad in (-1, "many", 1.5):
    with pytest.raises(ValueError, match="worker_count"):
      workers.resolve_worker_count(bad)
  with pytest.raises(ValueError, match="worker_count='x'"):
    input_pipeline.make_train_iterator(_config(worker_count="x"), get_tokenizer("bytes"), 4, seed=0)


def test_datacomp_config_sizes_workers_from_the_cores():
  from hyperclip_jax.config import load_config
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "datacomp.py"))
  assert config.data.worker_count == "auto" and config.data.mix_shards >= 16
