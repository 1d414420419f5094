"""config.data.task_sets: task-shaped conditioning sets of the demo stream (one attribute, distinct values,
class-prompt captions, same-class rows sharing a positive_id), their share, and task_sets=0 as before."""
import collections
import re

import ml_collections
import numpy as np
import pytest

from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.sources.demo import ATTRIBUTES, SYNONYMS, TEMPLATES, DemoSource, caption_mentions
from hyperclip_jax.data.sources.demo_task_sets import CLASS_NAMES, TASK_SET_ATTRIBUTES, TaskSetSource
from hyperclip_jax.data.tokenizers import get_tokenizer

SET_SIZE = 4


def _config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(name="demo", image_size=32, max_len=48, two_objects_prob=0.3, worker_count=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _take(it, n: int) -> list[dict]:
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def _value_in(caption: str, attribute: str) -> list[str]:
  """The values of `attribute` a caption names: by a caption synonym or the bare class name ('top left')."""
  return [v for v in SYNONYMS[attribute]
          if caption_mentions(caption, attribute, v) or re.search(rf"\b{v}\b", caption)]


@pytest.mark.parametrize("set_size", [4, 12])  # 12 > every attribute's number of values: values repeat
def test_task_groups_have_one_attribute_distinct_values_class_prompts_and_shared_ids(set_size):
  source = TaskSetSource(DemoSource(32, seed=3), set_size, task_sets=1.0)
  seen = set()
  for group in range(10):
    attribute, order = source.group_plan(group)
    seen.add(attribute)
    rows = [source[group * set_size + j] for j in range(set_size)]
    values = [order[j % len(order)] for j in range(set_size)]
    counts = collections.Counter(values)
    assert len(counts) == min(set_size, len(CLASS_NAMES[attribute]))  # distinct as far as the values allow
    assert max(counts.values()) - min(counts.values()) <= 1  # repeats as even as possible
    for j, (row, value) in enumerate(zip(rows, values)):
      caption = row["caption"]
      assert caption in [t.format(value) for t in TEMPLATES[attribute]], caption
      assert _value_in(caption, attribute) == [value], caption
      for other in ATTRIBUTES:
        if other != attribute:
          assert _value_in(caption, other) == [], (caption, other)
      # the image shows that value: it is the demo scene rendered with the attribute pinned
      image, scene = source.source.sample(group * set_size + j, **{attribute: value})
      np.testing.assert_array_equal(row["image"], image)
      assert getattr(scene.objects[0], attribute) == value and len(scene.objects) == 1
    for a in range(set_size):
      for b in range(set_size):
        same = rows[a]["positive_row"] == rows[b]["positive_row"]
        assert same == (values[a] == values[b])
      assert group * set_size <= rows[a]["positive_row"] < (group + 1) * set_size
  assert len(seen) >= 3  # the attribute is drawn per group
  assert seen <= set(TASK_SET_ATTRIBUTES)


def test_share_of_task_groups_is_near_the_probability_and_normal_rows_are_unchanged():
  base = DemoSource(32, seed=1)
  source = TaskSetSource(base, SET_SIZE, task_sets=0.3)
  plans = [source.group_plan(g) for g in range(2000)]
  share = sum(p is not None for p in plans) / len(plans)
  assert abs(share - 0.3) < 0.04, share  # binomial sd ~0.010
  normal = next(g for g, p in enumerate(plans) if p is None)
  g = normal * SET_SIZE + 1
  row = source[g]
  assert row["positive_row"] == g and row["caption"] == base[g]["caption"]
  np.testing.assert_array_equal(row["image"], base[g]["image"])


def test_pipeline_positive_ids_are_unique_per_batch_and_shared_by_same_class_rows_across_hosts():
  tok = get_tokenizer("bytes")
  config = _config(task_sets=0.5)
  single = _take(input_pipeline.make_train_iterator(config, tok, 16, seed=0, set_size=SET_SIZE), 3)
  hosts = [_take(input_pipeline.make_train_iterator(config, tok, 16, 0, k, 2, set_size=SET_SIZE), 3) for k in (0, 1)]
  source = TaskSetSource(DemoSource(32, seed=0, two_objects_prob=0.3), SET_SIZE, 0.5)
  kinds = set()
  for step, batch in enumerate(single):
    ids = batch["positive_id"]
    assert ids.dtype == np.int32 and ids.shape == (16,)
    np.testing.assert_array_equal(np.concatenate([h[step]["positive_id"] for h in hosts]), ids)
    np.testing.assert_array_equal(np.concatenate([h[step]["text"] for h in hosts]), batch["text"])
    for group in range(16 // SET_SIZE):
      plan = source.group_plan(step * 4 + group)
      rows = range(group * SET_SIZE, (group + 1) * SET_SIZE)
      kinds.add(plan is None)
      if plan is None:
        np.testing.assert_array_equal(ids[list(rows)], list(rows))  # its own batch row
      else:
        captions = tok.decode(batch["text"][list(rows)])
        for a in rows:
          for b in rows:
            assert (ids[a] == ids[b]) == (captions[a - rows[0]] == captions[b - rows[0]]
                                          or _same_class(captions, a - rows[0], b - rows[0], plan[0]))
    # ids of different groups never meet
    group_of = {int(i): r // SET_SIZE for r, i in enumerate(ids)}
    assert all(group_of[int(i)] == r // SET_SIZE for r, i in enumerate(ids))
  assert kinds == {True, False}  # both kinds of group were checked


def _same_class(captions: list[str], a: int, b: int, attribute: str) -> bool:
  return _value_in(captions[a], attribute) == _value_in(captions[b], attribute)


def test_task_sets_zero_gives_todays_batches_exactly_and_resume_is_exact():
  tok = get_tokenizer("bytes")
  today = _take(input_pipeline.make_train_iterator(_config(), tok, 8, seed=2), 2)
  off = _take(input_pipeline.make_train_iterator(_config(task_sets=0.0), tok, 8, seed=2, set_size=SET_SIZE), 2)
  for a, b in zip(today, off):
    assert a.keys() == b.keys() and "positive_id" not in b
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  it = input_pipeline.make_train_iterator(_config(task_sets=0.5), tok, 8, seed=2, set_size=SET_SIZE)
  first = _take(it, 3)
  resumed = input_pipeline.make_train_iterator(_config(task_sets=0.5), tok, 8, seed=2, set_size=SET_SIZE)
  resumed.set_state({"next_step": 2, "global_batch_size": 8})
  again = _take(resumed, 1)[0]
  for k in first[2]:
    np.testing.assert_array_equal(first[2][k], again[k])


def test_task_sets_bad_settings_are_refused_in_one_line():
  tok = get_tokenizer("bytes")
  with pytest.raises(ValueError, match="demo source only"):
    input_pipeline.make_train_iterator(_config(name="manifest", manifest="x.jsonl", task_sets=0.5), tok, 8, 0,
                                       set_size=SET_SIZE)
  with pytest.raises(ValueError, match="set_size"):
    input_pipeline.make_train_iterator(_config(task_sets=0.5), tok, 8, seed=0)
  with pytest.raises(ValueError, match=r"task_sets=1.5 must be a probability"):
    TaskSetSource(DemoSource(32), SET_SIZE, 1.5)
