"""webdataset shards: host/stream partition, exact resume, bad data skipped and counted, tar safety."""
import logging
import tarfile

import ml_collections
import numpy as np
import pytest
from conftest import add_member, jpeg, truncate

from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.sources import webdataset
from hyperclip_jax.data.tokenizers import get_tokenizer

TOK = get_tokenizer("bytes")


def _config(pattern, **kw):
  fields = dict(name="webdataset", pattern=pattern, image_size=16, max_len=16, worker_count=0, read_threads=0,
                shuffle_block=4, streams_per_host=2)
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


def _ids(batch):
  return [int(t.split()[1]) for t in TOK.decode(batch["text"])]


def _take(it, n):
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def test_expand_pattern_handles_ranges_lists_and_globs(tmp_path):
  assert webdataset.expand_pattern("a/{008..011}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
  assert webdataset.expand_pattern("{x,y}-{0..1}.tar::z.tar") == ["x-0.tar", "x-1.tar", "y-0.tar", "y-1.tar",
                                                                   "z.tar"]
  for name in ("b.tar", "a.tar", "c.txt"):
    (tmp_path / name).write_bytes(b"")
  assert webdataset.expand_pattern(str(tmp_path / "*.tar")) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]


def test_every_sample_read_once_per_epoch_across_2_hosts_x_2_workers(shards):
  pattern = shards(8, 5)  # 40 samples, 4 reader streams over 8 shards, 2 at a time
  seen = []
  for host in range(2):
    it = input_pipeline.make_train_iterator(_config(pattern, worker_count=2, mix_shards=2), TOK, 4, seed=3,
                                            process_index=host, process_count=2)
    try:
      batches = _take(it, 30)  # 60 samples per host: every stream is into epoch 1
    finally:
      it.close()
    assert all(b["image"].shape == (2, 16, 16, 3) for b in batches)
    epoch0 = [i for b in batches for i, e in zip(_ids(b), b["epoch"]) if e == 0]
    assert max(e for b in batches for e in b["epoch"]) >= 1
    seen.append(epoch0)
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(40))
  # The same host reads the same order with its streams decoded in this process.
  inline = input_pipeline.make_train_iterator(_config(pattern, mix_shards=2), TOK, 4, seed=3, process_index=1,
                                              process_count=2)
  assert [_ids(b) for b in _take(inline, 30)] == [_ids(b) for b in batches]


def test_epochs_are_reshuffled(shards):
  pattern = shards(4, 5)
  it = input_pipeline.make_train_iterator(_config(pattern, streams_per_host=1), TOK, 4, seed=0)
  ids = [i for b in _take(it, 10) for i in _ids(b)]
  assert sorted(ids[:20]) == sorted(ids[20:]) == list(range(20))
  assert ids[:20] != ids[20:]


@pytest.mark.parametrize("saved_workers", [0, 2])
def test_resume_continues_with_exactly_the_next_batch(shards, saved_workers):
  pattern = shards(4, 7)
  it = input_pipeline.make_train_iterator(_config(pattern, worker_count=saved_workers, mix_shards=2), TOK, 3, seed=5)
  try:
    _take(it, 5)  # mid-block, mid-shard
    state = it.get_state()
    expected = _take(it, 4)
  finally:
    it.close()
  restored = input_pipeline.make_train_iterator(_config(pattern, mix_shards=2), TOK, 3, seed=5)
  restored.set_state(state)
  for want, got in zip(expected, _take(restored, 4)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match="mix_shards"):
    input_pipeline.make_train_iterator(_config(pattern), TOK, 3, seed=5).set_state(state)


def _hosts(pattern, hosts, batch, **kw):
  return [input_pipeline.make_train_iterator(_config(pattern, **kw), TOK, batch, seed=4, process_index=k,
                                             process_count=hosts) for k in range(hosts)]


def _run(its, steps, seen):
  """Steps every simulated host, adds the epoch-0 sample ids read to `seen`, returns the gathered state."""
  for it in its:
    for b in _take(it, steps):
      seen += [i for i, e in zip(_ids(b), b["epoch"]) if e == 0]
  states = [it.get_state() for it in its]
  return dict(states[0], hosts=[s["hosts"][k] for k, s in enumerate(states)])  # what allgather gives


@pytest.mark.parametrize("hosts", [1, 4])
def test_resume_on_another_host_count_reads_every_sample_once_per_epoch(shards, hosts):
  pattern = shards(16, 5)  # 80 samples; 2 shards a group, 8 groups
  kw = dict(mix_shards=2, shuffle_block=4, streams_per_host=2)
  seen = []
  state = _run(_hosts(pattern, 2, 12, **kw), 2, seen)  # mid-block in every stream
  its = _hosts(pattern, hosts, 12, **kw)
  for it in its:
    it.set_state(state)
  state = _run(its, 1, seen)  # a save on the new host count, mid-epoch again
  assert len(state["plans"]) == 1  # epoch 0 is still being read under the replanned split
  final = _hosts(pattern, 2, 12, **kw)  # and back
  for it in final:
    it.set_state(state)
  state = _run(final, 12, seen)  # 144 samples: every stream is far into epoch 1
  assert sorted(seen) == list(range(80))
  resumed = _hosts(pattern, 2, 12, **kw)[0]
  resumed.set_state(state)
  assert resumed.get_state()["plans"] == {}  # epoch 1 is read under the ordinary split


def test_a_host_batch_draws_from_every_open_shard(shards):
  pattern = shards(8, 12)  # equal shards: all 4 shards of a group stay open through the group
  distinct = {}
  for mix in (4, 1):
    it = input_pipeline.make_train_iterator(_config(pattern, mix_shards=mix, shuffle_block=16, streams_per_host=1),
                                            TOK, 8, seed=2)
    distinct[mix] = [len({i // 12 for i in _ids(b)}) for b in _take(it, 24)]  # two epochs
  assert set(distinct[4]) == {4}
  assert max(distinct[1]) <= 2  # one shard at a time: a batch spans at most a shard boundary


def test_bad_samples_are_skipped_counted_and_logged_once(tmp_path, shards, caplog):
  pattern = shards(4, 5, bad={1: "jpeg", 2: "empty", 6: "nocaption", 8: "jpeg"})
  root = tmp_path / "shards"
  truncate(root / "shard-002.tar")  # a cut inside a member: the samples before it are kept
  (root / "shard-004.tar").write_bytes(b"this is not a tar file" * 40)
  pattern = pattern.replace("003}", "004}")
  intact = {i for i in range(20) if i not in (1, 2, 6, 8) and not 10 <= i < 15}
  survivors = {int(s["__key__"]) for s in webdataset.read_shard(str(root / "shard-002.tar")) if isinstance(s, dict)}
  assert survivors == {10, 11, 12, 13}
  n_good = len(intact | survivors)
  config = _config(pattern, streams_per_host=1, shuffle=False)
  with caplog.at_level(logging.WARNING):
    it = input_pipeline.make_train_iterator(config, TOK, 1, seed=0)
    ids = [i for b in _take(it, n_good + 1) for i in _ids(b)]  # +1: past the unreadable last shard
  assert sorted(ids[:n_good]) == sorted(intact | survivors) and ids[n_good] == 0
  skipped = {k.split("/")[-1]: v for k, v in it.metrics().items() if v}
  assert skipped == {"bad_image": 2, "empty_caption": 1, "missing_caption": 1, "truncated_tar": 1,
                     "unreadable_shard": 1}
  warnings = [r.getMessage() for r in caplog.records if "skipping bad samples" in r.getMessage()]
  assert sorted(w.split("(")[1].split(")")[0] for w in warnings) == sorted(skipped)
  # Counts are part of the state: a resumed iterator keeps counting from there.
  restored = input_pipeline.make_train_iterator(config, TOK, 1, seed=0)
  restored.set_state(it.get_state())
  assert restored.metrics() == it.metrics()


def test_a_resumed_reader_counts_a_truncated_shard_once(shards, tmp_path):
  pattern = shards(1, 6)
  truncate(tmp_path / "shards" / "shard-000.tar")
  config = _config(pattern, streams_per_host=1, shuffle=False)
  full = list(webdataset.read_shard(str(tmp_path / "shards" / "shard-000.tar")))
  assert len(full) == 6 and full[-1].reason == "truncated_tar"
  for skip in range(len(full) + 1):
    assert [repr(x) for x in webdataset.read_shard(str(tmp_path / "shards" / "shard-000.tar"), skip)] == \
        [repr(x) for x in full[skip:]]
  it = input_pipeline.make_train_iterator(config, TOK, 1, seed=0)
  _take(it, len(full) - 1)
  assert it.metrics()["data/skipped/truncated_tar"] == 0
  _take(it, 1)  # the next epoch starts past the cut
  assert it.metrics()["data/skipped/truncated_tar"] == 1


def test_member_names_are_never_paths_on_disk(tmp_path):
  shard = tmp_path / "evil.tar"
  with tarfile.open(shard, "w") as tar:
    add_member(tar, "../escape.jpg", jpeg(1))
    add_member(tar, "../escape.txt", b"a caption")
    add_member(tar, "/tmp/abs_evil.txt", b"x")
  before = sorted(p.name for p in tmp_path.parent.iterdir())
  samples = list(webdataset.read_shard(str(shard)))
  assert [s["__key__"] for s in samples] == ["../escape", "/tmp/abs_evil"]
  assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
  assert not (tmp_path.parent / "escape.jpg").exists()


def test_a_source_that_yields_nothing_names_the_pattern(tmp_path, shards):
  with pytest.raises(ValueError, match=r"nothing-here/\{0\.\.3\}\.tar.*matches 0 shard"):
    input_pipeline.make_train_iterator(_config(str(tmp_path / "nothing-here/{0..3}.tar"), streams_per_host=1),
                                       TOK, 2, seed=0)
  pattern = shards(2, 3, bad={i: "jpeg" for i in range(6)})
  it = input_pipeline.make_train_iterator(_config(pattern, streams_per_host=1), TOK, 2, seed=0)
  with pytest.raises(ValueError, match="yields no usable sample"):
    next(it)


def test_json_captions(shards):
  pattern = shards(2, 3, json_caption=True)
  it = input_pipeline.make_train_iterator(_config(pattern, caption_key="json:caption", streams_per_host=1,
                                                  shuffle=False), TOK, 3, seed=0)
  assert _ids(next(it)) == [0, 1, 2]


def test_each_host_resumes_its_own_streams_from_the_gathered_state(shards):
  pattern = shards(8, 3)
  its = [input_pipeline.make_train_iterator(_config(pattern), TOK, 4, seed=1, process_index=k, process_count=2)
         for k in range(2)]
  for it in its:
    _take(it, 3)
  states = [it.get_state() for it in its]  # simulated hosts: each knows its own row
  gathered = dict(states[0], hosts=[states[0]["hosts"][0], states[1]["hosts"][1]])  # what allgather gives
  expected = [_take(it, 2) for it in its]
  for k in range(2):
    restored = input_pipeline.make_train_iterator(_config(pattern), TOK, 4, seed=1, process_index=k,
                                                  process_count=2)
    restored.set_state(gathered)
    assert [_ids(b) for b in _take(restored, 2)] == [_ids(b) for b in expected[k]]
  with pytest.raises(ValueError, match="no stream positions for host 1"):
    input_pipeline.make_train_iterator(_config(pattern), TOK, 4, seed=1, process_index=1,
                                       process_count=2).set_state(states[0])
