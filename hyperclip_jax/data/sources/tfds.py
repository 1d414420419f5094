"""TFDS datasets through `tfds.data_source` (array_record files; reading needs no TensorFlow).

Known names pick their keys: imagenet2012, cifar10, cifar100 (captions made from class names with a
template), coco_captions (the first of each image's captions). Any other prepared dataset works with its
keys given: `config.data.tfds_image_key`, and `tfds_text_key` (a path like 'captions/text') or
`tfds_label_key`. Preparing (downloading) a dataset is `tfds build NAME`, which needs TensorFlow; reading it
here needs only `pip install tensorflow-datasets`.
"""
from typing import Any

import numpy as np

from hyperclip_jax.data.bad_data import BadSample

# name -> (image key, text key, label key)
KNOWN: dict[str, tuple[str, str, str]] = {
    "imagenet2012": ("image", "", "label"),
    "cifar10": ("image", "", "label"),
    "cifar100": ("image", "", "label"),
    "coco_captions": ("image", "captions/text", ""),
}
TEMPLATE = "a photo of a {}."


def _lookup(example: dict, path: str) -> Any:
  value = example
  for part in path.split("/"):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return value


class TfdsSource:
  """Random-access {'image': uint8 [H, W, 3], 'caption': str, 'label': int}; `class_names` when labelled."""

  raw_examples = True  # decoded by config.data.pp (its `decode` passes arrays through)

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, image_key: str = "",
               text_key: str = "", label_key: str = "", template: str = TEMPLATE):
    try:
      import tensorflow_datasets as tfds  # optional: not in requirements.txt
    except ImportError:
      raise ValueError("config.data.name='tfds' needs tensorflow-datasets: pip install tensorflow-datasets "
                       "(reading needs no TensorFlow)") from None
    base = name.split(":")[0].split("/")[0]
    default = KNOWN.get(base, ("image", "", ""))
    self.image_key = image_key or default[0]
    self.text_key, self.label_key = (text_key, label_key) if (text_key or label_key) else default[1:]
    if not (self.text_key or self.label_key):
      raise ValueError(f"tfds dataset {name!r} is not one of {', '.join(KNOWN)}: set config.data.tfds_text_key "
                       "(a caption feature) or config.data.tfds_label_key (class names become captions)")
    try:
      self._ds = _open(tfds, name, split, data_dir)
    except Exception as e:  # not prepared, unknown name, no array_record files: one line naming the dataset
      raise ValueError(f"tfds dataset {name!r} split {split!r} cannot be opened ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:160] if str(e) else ''}); prepare it with `tfds build {base}` "
                       "and set config.data.tfds_data_dir") from None
    self.name, self.template = name, template
    self.class_names: list[str] | None = None
    if self.label_key:
      feature = self._ds.dataset_info.features[self.label_key]
      self.class_names = [n.replace("_", " ") for n in feature.names]

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self._ds[i]
    image = _lookup(example, self.image_key)
    if image is None:
      raise BadSample("missing_image", f"{self.name}[{i}] has no {self.image_key!r}")
    out = {"image": np.asarray(image) if not isinstance(image, bytes) else image, "key": f"{self.name}/{i}"}
    if self.label_key:
      label = int(_lookup(example, self.label_key))
      out["label"] = label
    if self.text_key:
      text = _lookup(example, self.text_key)
      if isinstance(text, (list, tuple, np.ndarray)):
        text = text[0] if len(text) else None
      if text is None:
        raise BadSample("missing_caption", f"{self.name}[{i}] has no {self.text_key!r}")
      out["caption"] = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    else:
      out["caption"] = self.template.format(self.class_names[out["label"]])
    return out


def _open(tfds: Any, name: str, split: str, data_dir: str | None) -> Any:
  """tfds.data_source, or, where the dataset's builder code needs TensorFlow (coco_captions), the prepared
  files read through tfds' read-only builder, which needs no dataset code."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except ImportError:
    from tensorflow_datasets.core import read_only_builder
    kw = {"data_dir": data_dir} if data_dir else {}
    return read_only_builder.builder_from_files(name, **kw).as_data_source(split=split)


def from_config(config_data: Any) -> TfdsSource:
  """The source for config.data.tfds_* keys."""
  if not config_data.get("tfds_name"):
    raise ValueError("config.data.name='tfds' needs config.data.tfds_name, e.g. imagenet2012 or coco_captions")
  return TfdsSource(config_data.tfds_name, split=config_data.get("tfds_split", "train"),
                    data_dir=config_data.get("tfds_data_dir", "") or None,
                    image_key=config_data.get("tfds_image_key", ""), text_key=config_data.get("tfds_text_key", ""),
                    label_key=config_data.get("tfds_label_key", ""))
