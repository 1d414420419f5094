"""Evaluation data: a config.evals.NAME.data dict -> labelled batches, image-text pairs, or the demo tasks.

  data = dict(name='tfds', dataset='cifar100', split='test', data_dir='', image_key='', label_key='',
              text_key='')
  data = dict(name='manifest', manifest='/data/val.jsonl', image_key='image', label_key='label',
              caption_key='caption')
  data = dict(name='demo', tasks='')   # the procedural demo tasks: '' = all seven, or e.g. 'colour,shape'

tfds: any prepared dataset, read through tfds.data_source (no TensorFlow); the keys default to those of the
known datasets (data/sources/tfds.py: imagenet2012, cifar10, cifar100, coco_captions). manifest: JSON lines or
CSV; for classification a row's label is a class name of the evaluator's class list or an integer index, for
retrieval its caption column is read. Images go through the evaluator's `pp` (default: resize_small +
central_crop to config.data.image_size, value_range(-1, 1)); a bad item is skipped and logged.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hyperclip_jax.data import bad_data, eval_input, input_pipeline
from hyperclip_jax.data import pp as pp_lib
from hyperclip_jax.data.sources.manifest import ManifestSource
from hyperclip_jax.data.sources.tfds import TfdsSource

DATA_KEYS = {
    "tfds": ("name", "dataset", "split", "data_dir", "image_key", "label_key", "text_key"),
    "manifest": ("name", "manifest", "image_key", "label_key", "caption_key"),
    "demo": ("name", "tasks"),
}
# zeroshot `tasks` presets: name -> (data, classes, templates)
PRESETS = {
    "imagenet": ({"name": "tfds", "dataset": "imagenet2012", "split": "validation"}, "imagenet1k", "imagenet1k"),
    "cifar100": ({"name": "tfds", "dataset": "cifar100", "split": "test"}, "cifar100", "cifar"),
    "cifar10": ({"name": "tfds", "dataset": "cifar10", "split": "test"}, "cifar10", "cifar"),
}


def as_dict(data: Any) -> dict[str, Any]:
  """A ConfigDict / dict / None data spec as a plain dict."""
  if data is None:
    return {}
  return dict(data.to_dict() if hasattr(data, "to_dict") else data)


def check(data: dict[str, Any], where: str) -> str | None:
  """The first problem with a data spec as a one-line message naming `where` (e.g. config.evals.x.data)."""
  name = data.get("name")
  if name not in DATA_KEYS:
    return f"{where}.name={name!r} is unknown; known: {', '.join(DATA_KEYS)}"
  for key, value in data.items():
    if key not in DATA_KEYS[name]:
      return f"{where}.{key} is unknown for name={name!r}; known: {', '.join(DATA_KEYS[name])}"
    if not isinstance(value, str):
      return f"{where}.{key}={value!r} must be a string"
  if name == "tfds" and not data.get("dataset"):
    return f"{where}.dataset is missing; give a prepared TFDS dataset, e.g. 'cifar100'"
  if name == "manifest" and not data.get("manifest"):
    return f"{where}.manifest is missing; give a .jsonl or .csv file"
  return None


def demo_task_names(data: dict[str, Any]) -> list[str] | None:
  """The demo tasks a 'demo' data spec asks for (None: all)."""
  names = [t.strip() for t in data.get("tasks", "").split(",") if t.strip()]
  return names or None


class LabelledManifest:
  """A manifest's rows as {'image': bytes, 'label': int}: the label column holds class names or indices."""

  def __init__(self, path: str, class_names: Sequence[str], image_key: str = "image", label_key: str = "label"):
    self._rows = ManifestSource(path, image_key=image_key, caption_key=label_key)  # 'caption' = the label text
    self._index = {c: i for i, c in enumerate(class_names)}
    self.class_names = list(class_names)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self._rows[i]
    text = example["caption"]
    label = self._index.get(text)
    if label is None and text.lstrip("-").isdigit() and 0 <= int(text) < len(self.class_names):
      label = int(text)
    if label is None:
      raise bad_data.BadSample("bad_record", f"{self._rows.path} row {i}: label {text!r} is neither a class name nor an "
                      f"index below {len(self.class_names)}")
    return {"image": example["image"], "label": label, "key": example["key"]}


def labelled_source(data: dict[str, Any], class_names: Sequence[str] | None) -> Any:
  """A random-access {'image', 'label'} source (tfds or manifest); tfds sources know their `class_names`."""
  if data["name"] == "tfds":
    return TfdsSource(data["dataset"], split=data.get("split", "") or "test", data_dir=data.get("data_dir") or None,
                      image_key=data.get("image_key", ""), label_key=data.get("label_key", "") or "label")
  if not class_names:
    raise ValueError(f"a manifest eval ({data['manifest']}) needs a class list: set classes= (a shipped list or a "
                     "file with one class name per line)")
  return LabelledManifest(data["manifest"], class_names, data.get("image_key", "") or "image",
                          data.get("label_key", "") or "label")


def pair_source(data: dict[str, Any]) -> Any:
  """A random-access {'image', 'caption'} source (tfds or manifest) for retrieval."""
  if data["name"] == "tfds":
    return TfdsSource(data["dataset"], split=data.get("split", "") or "test", data_dir=data.get("data_dir") or None,
                      image_key=data.get("image_key", ""), text_key=data.get("text_key", ""))
  return ManifestSource(data["manifest"], image_key=data.get("image_key", "") or "image",
                        caption_key=data.get("caption_key", "") or "caption")


def labelled_batches(source: Any, image_size: int, batch_size: int, pp: str, n: int,
                     workers: int = 0) -> Callable[..., Iterator]:
  """(process_index=0, process_count=1) -> iterator of (images f32 [b, S, S, 3] in [-1, 1], labels i32 [b]) over
  the first n items (0: all), decoded in `workers` grain processes (0: in this one). With several processes,
  each decodes 1/P of the items and yields its rows of every global batch, padded (label -1) to equal counts."""

  def batches(process_index: int = 0, process_count: int = 1) -> Iterator:
    if process_count > 1:
      return eval_input.host_eval_batches(source, image_size, batch_size, pp, n, workers, process_index,
                                          process_count)
    if workers > 0:
      return eval_input.sharded_eval_batches(source, image_size, batch_size, pp, n, workers)
    return input_pipeline.make_source_eval_batches(source, image_size, batch_size, pp, n)
  return batches


def pairs(source: Any, image_size: int, pp: str) -> Callable[[], Iterator[tuple[np.ndarray, str]]]:
  """() -> iterator of (image f32 [S, S, 3] in [-1, 1], caption), in source order; bad items are skipped."""
  fn = pp_lib.build(pp or input_pipeline.EVAL_PP.format(size=image_size))

  def read():
    skips, rng = bad_data.SkipLog(), np.random.default_rng(0)
    for i in range(len(source)):
      try:
        example = source[i]
        image = np.asarray(fn({"image": example["image"]}, rng)["image"], np.float32)
      except bad_data.BadSample as e:
        counts = bad_data.zero_counts()
        bad_data.count(counts, e.reason)
        skips.add(counts, {e.reason: e.detail})
        continue
      yield image, example["caption"]
  return read
