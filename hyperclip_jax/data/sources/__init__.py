"""Data sources: random-access sequences of {'image': uint8 [H, W, 3] or encoded bytes, 'caption': str}.

`get_source(config_data, seed)` builds the one named `config_data.name`. A source's `len()` is its size; the
procedural demo source is effectively infinite (len 2**62) and is read in order, finite sources (manifest,
tfds) are reshuffled every epoch by the input pipeline. A source with `raw_examples = True` yields encoded
images, decoded by config.data.pp, and may raise `BadSample` for an item (skipped and counted).
'webdataset' shards are streamed, not random access: see data/streaming.py (STREAMING names them).
"""
from typing import Any, Callable

from hyperclip_jax.data.sources import demo, tfds
from hyperclip_jax.data.sources.demo import DemoSource, ZeroShotTask, demo_tasks
from hyperclip_jax.data.sources.manifest import ManifestSource


def _demo(config_data: Any, seed: int) -> DemoSource:
  return DemoSource(
      image_size=config_data.get("image_size", 64), seed=seed,
      two_objects_prob=config_data.get("two_objects_prob", 0.3),
      partial_caption_prob=config_data.get("partial_caption_prob", 0.2),
      contrast_prob=config_data.get("contrast_prob", 0.0),
      contrast_group=config_data.get("contrast_group", 2),
      contrast_attributes=config_data.get("contrast_attributes", demo.CONTRAST_ATTRIBUTES),
      object_scale=config_data.get("object_scale", 1.0),
      solid_named_prob=config_data.get("solid_named_prob", 0.4))


def _manifest(config_data: Any, seed: int) -> Any:
  if not config_data.get("manifest"):
    raise ValueError("config.data.name='manifest' needs config.data.manifest=PATH (.jsonl or .csv)")
  return ManifestSource(config_data.manifest, image_key=config_data.get("image_key", "image"),
                        caption_key=config_data.get("caption_key", "") or "caption")


def _tfds(config_data: Any, seed: int) -> Any:
  return tfds.from_config(config_data)


SOURCES: dict[str, Callable[[Any, int], Any]] = {
    "demo": _demo,
    "manifest": _manifest,
    "tfds": _tfds,
}
STREAMING = ("webdataset",)


def get_source(config_data: Any, seed: int) -> Any:
  """The training source named config_data.name, seeded with `seed`."""
  name = config_data.get("name", "demo")
  if name not in SOURCES:
    raise ValueError(f"config.data.name={name!r} is unknown; known: {', '.join(sorted([*SOURCES, *STREAMING]))}")
  return SOURCES[name](config_data, seed)


__all__ = ["DemoSource", "ZeroShotTask", "demo_tasks", "get_source", "SOURCES", "STREAMING"]
