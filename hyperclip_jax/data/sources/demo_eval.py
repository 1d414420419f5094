"""The demo zero-shot tasks: each pins one attribute (or a pair) to its class per example, on eval streams
disjoint from training; and the demo vocabulary (every word the captions, class names and templates use).
"""
import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from hyperclip_jax.data.sources.demo_source import DEFAULT_EVAL_SEED, GENERIC_NOUNS, PREFIXES, DemoSource
from hyperclip_jax.data.sources.demo_world import (
    COLOURS,
    HELDOUT_PAIRS,
    POSITIONS,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    SYNONYMS,
    TEXTURES,
    Scene,
)


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """A zero-shot classification task: prompts come from class names x templates; sample_fn(i) gives the
  i-th eval example as (image uint8 [H, W, 3], label int) for i in range(n_eval), deterministically."""
  name: str
  class_names: tuple[str, ...]
  templates: tuple[str, ...]
  sample_fn: Callable[[int], tuple[np.ndarray, int]]
  n_eval: int

  def prompts(self) -> list[list[str]]:
    """[num_classes][num_templates] prompt strings."""
    return [[t.format(c) for t in self.templates] for c in self.class_names]


class DemoTaskSampler:
  """sample_fn of a demo zero-shot task: example i pins attribute `attribute` to class i % num_classes
  (balanced classes), all else random; a single object per image so the label is unambiguous."""

  def __init__(self, source: DemoSource, attribute: str, class_names: Sequence[str],
               pinned: tuple[tuple[str, str], ...] = ()):
    self.source, self.attribute, self.class_names = source, attribute, tuple(class_names)
    self.pinned = dict(pinned)  # attributes fixed for every example, e.g. size=large

  def _fixed(self, label: int) -> dict:
    name = self.class_names[label]
    if self.attribute == "colour_shape":
      colour, shape = name.split(" ")
      return {**self.pinned, "colour": colour, "shape": shape}
    if self.attribute == "size_position":
      return dict(SIZE_POSITION_CLASSES[name])
    return {**self.pinned, self.attribute: name}

  def sample(self, index: int) -> tuple[np.ndarray, Scene, int]:
    label = index % len(self.class_names)
    image, scene = self.source.sample(index, **self._fixed(label))
    return image, scene, label

  def __call__(self, index: int) -> tuple[np.ndarray, int]:
    image, _, label = self.sample(index)
    return image, label


TEMPLATES = {
    "colour": ("the {} shape.", "a photo of the {} object.", "something {}.", "one {} object."),
    "shape": ("a photo of a {}.", "a {}.", "the {} shape.", "an image of one {}."),
    "colour_shape": ("the {}.", "a photo of the {}.", "one {}.", "an image with one {}."),
    "size": ("a {} shape.", "a photo of a {} object.", "the {} thing.", "one {} object."),
    "position": ("a shape at the {}.", "an object in the {}.", "a photo of something at the {}.",
                 "one thing in the {}."),
    "texture": ("the {} shape.", "one {} object.", "a photo of something {}."),
    "size_position": ("a {}.", "a photo of a {}.", "one {}.", "an image of a {}."),
}

# "large shape at the top left" -> {size, position}: a 10-class compositional task. (A plain 2-class size
# task cannot show "twice chance", so size is evaluated together with position.)
SIZE_POSITION_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    f"{size} shape {SYNONYMS['position'][pos][0]}": (("size", size), ("position", pos))
    for size in SIZES for pos in POSITIONS}


DEMO_TASK_NAMES = ("colour", "shape", "colour_shape", "position", "size_position", "texture", "heldout_colour_shape")


def demo_tasks(image_size: int = 64, n_eval: int = 512, seed: int = DEFAULT_EVAL_SEED,
               object_scale: float = 1.0) -> dict[str, ZeroShotTask]:
  """The demo zero-shot tasks, keyed by name. Their label-set sizes all differ (8, 6, 41, 5, 10, 3, 7).

  Eval examples come from streams disjoint from training (stream ids >= 1) and, by default, another seed.
  `heldout_colour_shape` uses only HELDOUT_PAIRS, which training never shows. `object_scale` must be the
  training source's (config.data.object_scale).
  """
  if n_eval < 1:
    raise ValueError(f"demo_tasks n_eval={n_eval} must be >= 1")
  specs = (  # name, attribute, class names, pairs the images draw from
      ("colour", "colour", tuple(COLOURS), SEEN_PAIRS),
      ("shape", "shape", SHAPES, SEEN_PAIRS),
      ("colour_shape", "colour_shape", tuple(f"{c} {s}" for c, s in SEEN_PAIRS), SEEN_PAIRS),
      ("position", "position", POSITIONS, SEEN_PAIRS),
      ("size_position", "size_position", tuple(SIZE_POSITION_CLASSES), SEEN_PAIRS),
      ("texture", "texture", TEXTURES, SEEN_PAIRS),
      ("heldout_colour_shape", "colour_shape", tuple(f"{c} {s}" for c, s in HELDOUT_PAIRS), HELDOUT_PAIRS),
  )
  assert tuple(name for name, *_ in specs) == DEMO_TASK_NAMES
  tasks = {}
  for stream, (name, attribute, classes, pairs) in enumerate(specs, start=1):
    source = DemoSource(image_size, seed, two_objects_prob=0.0, partial_caption_prob=0.0,
                        stream=stream, pairs=pairs, object_scale=object_scale)
    # Shape and texture are judged on large objects: a small one is ~13 px across at 64 px, where star points
    # and stripes are 1-2 px. Training shows both sizes.
    pinned = (("size", "large"),) if attribute in ("shape", "texture", "colour_shape") else ()
    sampler = DemoTaskSampler(source, attribute, classes, pinned)
    tasks[name] = ZeroShotTask(name, tuple(classes), TEMPLATES[attribute], sampler, n_eval)
  return tasks


def vocabulary() -> tuple[str, ...]:
  """Every word the demo grammar, its task class names and templates can produce (sorted, deterministic)."""
  phrases = [w for values in SYNONYMS.values() for words in values.values() for w in words]
  phrases += list(PREFIXES) + list(GENERIC_NOUNS) + ["a an one the and two shapes photo of in at , :"]
  phrases += [t for templates in TEMPLATES.values() for t in templates]
  phrases += list(SIZE_POSITION_CLASSES) + list(POSITIONS)
  return tuple(sorted({w for p in phrases for w in re.findall(r"[^\W\d_]+|[^\s{}]", p.lower())}))
