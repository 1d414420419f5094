"""Fixed test-time conditioning texts: the hypernet reads ordinary training captions instead of a task's classes
(zero-shot condition='train_captions' / 'train_sets_mean', hyperclip-export --condition train_sets_mean)."""
from __future__ import annotations

import ml_collections

from hyperclip_jax.data import sources


def condition_captions(config: ml_collections.ConfigDict, sets: int) -> list[str]:
  """The first sets x set_size captions of the training source at seed 0: the fixed test-time conditioning
  texts of condition='train_captions' (sets=1) and 'train_sets_mean', consecutive set_size per set."""
  if config.data.get("name", "demo") in sources.STREAMING:
    raise ValueError(f"it needs a random-access training source; config.data.name={config.data.name!r} is "
                     "streamed: condition on the classes instead")
  source = sources.get_source(config.data, 0)
  n = config.model.hyper.set_size * sets
  if n > len(source):
    raise ValueError(f"{sets} conditioning set(s) of {config.model.hyper.set_size} captions need {n} training "
                     f"samples; the source has {len(source)}: use fewer sets")
  return [source[i]["caption"] for i in range(n)]
