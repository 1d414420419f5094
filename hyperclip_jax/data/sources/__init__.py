"""Data sources: random-access sequences of {'image': uint8 [H, W, 3], 'caption': str}.

`get_source(config_data, seed)` builds the one named `config_data.name`. A source's `len()` is its size; the
procedural demo source is effectively infinite (len 2**62) and is read in order, finite sources are
reshuffled every epoch by the input pipeline. tfds / webdataset / array_record sources join this table.
"""
from typing import Any, Callable

from hyperclip_jax.data.sources.demo import DemoSource, ZeroShotTask, demo_tasks


def _demo(config_data: Any, seed: int) -> DemoSource:
  return DemoSource(
      image_size=config_data.get("image_size", 64), seed=seed,
      two_objects_prob=config_data.get("two_objects_prob", 0.3),
      partial_caption_prob=config_data.get("partial_caption_prob", 0.2))


SOURCES: dict[str, Callable[[Any, int], Any]] = {
    "demo": _demo,
}


def get_source(config_data: Any, seed: int) -> Any:
  """The training source named config_data.name, seeded with `seed`."""
  name = config_data.get("name", "demo")
  if name not in SOURCES:
    raise ValueError(f"config.data.name={name!r} is unknown; known: {', '.join(sorted(SOURCES))}")
  return SOURCES[name](config_data, seed)


__all__ = ["DemoSource", "ZeroShotTask", "demo_tasks", "get_source", "SOURCES"]
