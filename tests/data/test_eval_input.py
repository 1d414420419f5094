"""Evaluation images decoded by grain workers and split across hosts: the same rows as the serial reader."""
import json

import numpy as np
from conftest import jpeg

from hyperclip_jax.data import eval_input, input_pipeline
from hyperclip_jax.evaluators.eval_data import LabelledManifest


def _source(tmp_path, n=11):
  (tmp_path / "img").mkdir()
  rows = []
  for i in range(n):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(i, size=20) if i != 4 else b"not an image")  # 4 is bad
    rows.append({"image": f"img/{i}.jpg", "label": ["cat", "dog", "fish"][i % 3]})
  (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return LabelledManifest(str(tmp_path / "m.jsonl"), ["cat", "dog", "fish"])


def _rows(batches):
  return [(img.tobytes(), int(label)) for images, labels in batches for img, label in zip(images, labels)]


def test_worker_decoded_and_host_sharded_eval_give_the_serial_rows(tmp_path):
  source = _source(tmp_path)
  serial = list(input_pipeline.make_source_eval_batches(source, 16, 3))
  parallel = list(eval_input.sharded_eval_batches(source, 16, 3, worker_count=2))
  assert [b[0].shape for b in parallel] == [b[0].shape for b in serial] == [(3, 16, 16, 3)] * 3 + [(1, 16, 16, 3)]
  for (a, la), (b, lb) in zip(serial, parallel):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
  # Three hosts, each decoding a third: together exactly the serial rows, so summed metrics are equal.
  hosts = [_rows(eval_input.sharded_eval_batches(source, 16, 2, process_index=k, process_count=3)) for k in range(3)]
  assert [len(h) for h in hosts] == [4, 3, 3]  # items 0,3,6,9 / 1,(4 bad),7,10 / 2,5,8
  assert sorted(r for h in hosts for r in h) == sorted(_rows(serial))
  hits = lambda rows: sum(int(np.frombuffer(img, np.float32).mean() > 0) == label % 2 for img, label in rows)
  assert sum(hits(h) for h in hosts) == hits(_rows(serial))


def test_host_batches_have_equal_counts_and_sizes_with_padding_labelled_minus_one(tmp_path):
  source = _source(tmp_path)
  serial = _rows(input_pipeline.make_source_eval_batches(source, 16, 4))
  hosts = [list(eval_input.host_eval_batches(source, 16, 6, process_index=k, process_count=3)) for k in range(3)]
  # 11 items over 3 hosts: at most 4 each, 2 rows per host and batch -> 2 batches on every host
  assert [[b[0].shape for b in batches] for batches in hosts] == [[(2, 16, 16, 3)] * 2] * 3
  rows = [r for batches in hosts for r in _rows(batches)]
  assert sorted(r for r in rows if r[1] >= 0) == sorted(serial)  # every good row once
  pads = [r for r in rows if r[1] < 0]
  assert len(pads) == 12 - len(serial) and all(not any(np.frombuffer(img, np.float32)) for img, _ in pads)
