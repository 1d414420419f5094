"""TFDS source through tfds.data_source under tfds.testing.mock_data (no TensorFlow, no download)."""
import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from hyperclip_jax.data import input_pipeline  # noqa: E402
from hyperclip_jax.data.sources.tfds import TfdsSource  # noqa: E402
from hyperclip_jax.data.tokenizers import get_tokenizer  # noqa: E402

TOK = get_tokenizer("bytes")


def _config(**kw):
  fields = dict(name="tfds", image_size=16, max_len=40, worker_count=0, tfds_split="train")
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize("name, n_classes", [("cifar10", 10), ("cifar100", 100)])
def test_labelled_datasets_caption_with_class_names(name, n_classes):
  with tfds.testing.mock_data(num_examples=6):
    source = TfdsSource(name)
    assert len(source) == 6 and len(source.class_names) == n_classes
    example = source[2]
    assert example["image"].dtype == np.uint8 and example["image"].shape[-1] == 3
    assert example["caption"] == f"a photo of a {source.class_names[example['label']]}."
    batch = next(input_pipeline.make_train_iterator(_config(tfds_name=name), TOK, 3, seed=0))
  assert batch["image"].shape == (3, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert all(t.startswith("a photo of a ") for t in TOK.decode(batch["text"]))


class _FakeCaptionSource(list):
  """What tfds.data_source('coco_captions') returns: examples with several captions per image."""

  def __init__(self):
    rng = np.random.default_rng(0)
    super().__init__({"image": rng.integers(0, 255, (20, 30, 3), np.uint8), "image/id": i,
                      "captions": {"id": np.arange(2), "text": np.array([f"caption {i}".encode(), b"other"])}}
                     for i in range(5))


def test_caption_datasets_and_any_name_with_keys(monkeypatch):
  monkeypatch.setattr(tfds, "data_source", lambda name, split, data_dir=None: _FakeCaptionSource())
  coco = TfdsSource("coco_captions")
  assert coco[3]["caption"] == "caption 3" and coco[3]["image"].shape == (20, 30, 3)
  batch = next(input_pipeline.make_train_iterator(_config(tfds_name="coco_captions", shuffle=False), TOK, 2, 0))
  assert TOK.decode(batch["text"]) == ["caption 0", "caption 1"] and batch["image"].shape == (2, 16, 16, 3)
  custom = TfdsSource("my_dataset", image_key="image", text_key="captions/text")
  assert custom[4]["caption"] == "caption 4"


def test_any_prepared_name_with_a_label_key():
  with tfds.testing.mock_data(num_examples=4):
    other = TfdsSource("mnist", label_key="label")
    assert other[1]["caption"].startswith("a photo of a ") and other[1]["image"].shape[-1] == 1
    batch = next(input_pipeline.make_train_iterator(_config(tfds_name="mnist", tfds_label_key="label"), TOK, 2, 0))
  assert batch["image"].shape == (2, 16, 16, 3)


def test_unknown_dataset_without_keys_says_which_keys_to_set():
  with pytest.raises(ValueError, match="tfds_text_key"):
    TfdsSource("mnist")


def test_eval_batches_from_a_labelled_tfds_split():
  with tfds.testing.mock_data(num_examples=5):
    source = TfdsSource("cifar10", split="test")
    batches = list(input_pipeline.make_source_eval_batches(source, image_size=24, batch_size=2))
  assert [b[0].shape for b in batches] == [(2, 24, 24, 3), (2, 24, 24, 3), (1, 24, 24, 3)]
  assert np.concatenate([b[1] for b in batches]).tolist() == [source[i]["label"] for i in range(5)]
  assert all(-1.0 <= b[0].min() and b[0].max() <= 1.0 and b[0].dtype == np.float32 for b in batches)
