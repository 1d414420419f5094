"""A run's own zero-shot eval images for one class list, as uint8: what an export's quantised variant is scored on.

The run's config.evals zero-shot tasks are searched for one whose class names are the exported ones, in the
same order; its eval images (the run's pp, in [-1, 1]) come back as uint8 RGB, the exported classifier's input.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hyperclip_jax import evaluators
from hyperclip_jax.evaluators import zeroshot


def eval_images(config: Any, class_names: Sequence[str], limit: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
  """(task name, images uint8 [M, S, S, 3], labels int32 [M]) of the first zero-shot task of config.evals with
  exactly class_names, at most `limit` images (0: all). Raises ValueError naming the tasks there are."""
  seen = []
  evals = config.get("evals", None) or {}
  for name in evals:
    kind, s = evaluators.settings_of(name, evals[name])
    if kind != "zeroshot":
      continue
    for task in zeroshot.tasks_for(config, name, s):
      seen.append(f"{task.name} ({len(task.class_names)} classes)")
      if list(task.class_names) != list(class_names):
        continue
      images, labels = [], []
      for x, y in task.batches():
        keep = np.asarray(y) >= 0  # padding rows carry label -1
        images.append(np.asarray(x)[keep])
        labels.append(np.asarray(y)[keep])
        if limit and sum(len(l) for l in labels) >= limit:
          break
      x, y = np.concatenate(images), np.concatenate(labels).astype(np.int32)
      x, y = (x[:limit], y[:limit]) if limit else (x, y)
      return task.name, np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8), y
  raise ValueError(f"the run's config.evals has no zero-shot task with these {len(class_names)} classes in this "
                   f"order (it has: {', '.join(seen) or 'none'}); export a class list the run evaluates on")
