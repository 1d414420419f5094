"""Task-shaped sets for the demo training stream (config.data.task_sets).

A conditioning set (set_size consecutive stream positions, the rows the hypernet reads together) is, with
probability task_sets, *task-shaped*: it looks like a zero-shot task's class set. One attribute among
TASK_SET_ATTRIBUTES is drawn for the group; its set_size images take distinct values of that attribute (when
set_size exceeds the attribute's number of values they repeat as evenly as possible: row j takes the
(j mod n_values)-th value of a random order); every row's caption is a class prompt for its value, from the
zero-shot tasks' TEMPLATES, naming only that attribute. Rows of one group with the same value are each
other's positives: they share a `positive_row` (the group's first row with that value), which the input
pipeline turns into the batch's `positive_id`. Every other row is its own positive_row, as before.

Whether a group is task-shaped, its attribute and its value order are a pure function of (seed, group index);
a row's template of (seed, position): batches stay a pure function of the step, so runs resume exactly.
"""
from typing import Any

import numpy as np

from hyperclip_jax.data.sources.demo_eval import TEMPLATES
from hyperclip_jax.data.sources.demo_world import COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES

# The single attributes the demo's zero-shot tasks are about (size is evaluated in size_position).
TASK_SET_ATTRIBUTES = ("colour", "shape", "size", "position", "texture")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS, "texture": TEXTURES}
_GROUP_KEY = 7_001  # rng keys of the group draws and the template draws; disjoint from the demo's streams
_TEMPLATE_KEY = 7_002


class TaskSetSource:
  """Wraps a DemoSource: item g is {'image', 'caption', 'positive_row'}; see the module docstring.

  `task_sets` = 0 leaves every item as the wrapped source's (positive_row = g).
  """

  def __init__(self, source: Any, set_size: int, task_sets: float):
    if not isinstance(set_size, int) or set_size < 1:
      raise ValueError(f"task-shaped sets need the model's set_size (a positive int); got {set_size!r}")
    if isinstance(task_sets, bool) or not isinstance(task_sets, (int, float)) or not 0.0 <= task_sets <= 1.0:
      raise ValueError(f"config.data.task_sets={task_sets!r} must be a probability in [0, 1]")
    self.source, self.set_size, self.task_sets = source, set_size, float(task_sets)
    self.seed = source.seed

  def __len__(self) -> int:
    return len(self.source)

  def group_plan(self, group: int) -> tuple[str, tuple[str, ...]] | None:
    """(attribute, value order) of a task-shaped group, None for a normal one."""
    rng = np.random.default_rng((self.seed, _GROUP_KEY, int(group)))
    if not rng.random() < self.task_sets:
      return None
    attribute = TASK_SET_ATTRIBUTES[int(rng.integers(len(TASK_SET_ATTRIBUTES)))]
    names = CLASS_NAMES[attribute]
    return attribute, tuple(names[i] for i in rng.permutation(len(names)))

  def __getitem__(self, g: int) -> dict:
    g = int(g)
    group, j = divmod(g, self.set_size)
    plan = self.group_plan(group) if self.task_sets else None
    if plan is None:
      example = self.source[g]
      return {"image": example["image"], "caption": example["caption"], "positive_row": g}
    attribute, order = plan
    slot = j % len(order)
    value = order[slot]
    image, _ = self.source.sample(g, **{attribute: value})
    templates = TEMPLATES[attribute]
    rng = np.random.default_rng((self.seed, _TEMPLATE_KEY, g))
    caption = templates[int(rng.integers(len(templates)))].format(value)
    return {"image": image, "caption": caption, "positive_row": group * self.set_size + slot}
