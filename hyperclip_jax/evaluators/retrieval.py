"""Image-text retrieval: Recall@1/5/10 in both directions over a paired eval set.

HyperCLIP protocol: the image tower needs generated norm params, which come from a *set* of texts. The N
captions are split into consecutive chunks of `set_size` (the training set size); the hypernet over chunk g
gives the norm params for the images of pairs in chunk g, exactly as in training, and every image is then
ranked against all N captions (and every caption against all N images). An image's own caption is in the set
that conditioned it, as in training; the siglip variant skips the hypernet. N is rounded down to a multiple
of set_size. Ties count in the model's favour (rank = number of strictly better candidates).

config.evals entries of type 'retrieval' (SETTINGS): data (default: the demo pairs), pp, num_pairs, batch_size.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hyperclip_jax.config import ConfigError
from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.sources import demo
from hyperclip_jax.evaluators import eval_data, settings
from hyperclip_jax.models import two_towers

KS = (1, 5, 10)
SETTINGS: settings.Settings = {"data": (dict, {"name": "demo"}), "pp": (str, ""), "num_pairs": (int, 512),
                               "batch_size": (int, 256)}
BARE_KEYS = False  # results go under retrieval/<task>


def recall_at_k(sim: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
  """sim [N, N] (image i, caption j; pair i is (i, i)) -> {'i2t_r1', ..., 't2i_r10'}."""
  sim = np.asarray(sim, np.float64)
  diag = np.diag(sim)
  i2t_rank = (sim > diag[:, None]).sum(1)  # captions better than the true one, per image
  t2i_rank = (sim > diag[None, :]).sum(0)  # images better than the true one, per caption
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = float((i2t_rank < k).mean())
    out[f"t2i_r{k}"] = float((t2i_rank < k).mean())
  return out


class RetrievalEvaluator:
  """Runs every dataset; results are {dataset: {'i2t_r1', ..., 't2i_r10', 'num_pairs'}}."""

  def __init__(self, model: two_towers.TwoTowers, tokenizer: Any, max_len: int,
               datasets: dict[str, Callable[[], Iterable[tuple[np.ndarray, str]]]], num_pairs: int,
               groups_per_batch: int = 8):
    """datasets: name -> () -> iterable of (image f32 [H, W, 3] in [-1, 1], caption)."""
    self.model, self.tokenizer, self.max_len = model, tokenizer, max_len
    self.datasets, self.groups_per_batch = datasets, groups_per_batch
    self.num_pairs = num_pairs - num_pairs % model.set_size
    if self.num_pairs < model.set_size:
      raise ValueError(f"retrieval needs at least set_size={model.set_size} pairs; got {num_pairs}")
    self._encode_text = jax.jit(model.encode_text)
    self._encode_images = jax.jit(self._embed_images)

  def _embed_images(self, params, batch_stats, images, ztxt):  # images [g, S, H, W, 3], ztxt [g, S, D]
    generated = self.model.generate(params, ztxt)
    zimg, _ = self.model.encode_image(params, batch_stats, images, generated, train=False)
    return zimg  # [g, S, D]

  def run_dataset(self, params: Any, batch_stats: Any, pairs: Iterable[tuple[np.ndarray, str]]) -> dict[str, float]:
    images, captions = [], []
    for image, caption in pairs:
      images.append(image)
      captions.append(caption)
      if len(images) == self.num_pairs:
        break
    if len(images) < self.num_pairs:
      raise ValueError(f"retrieval: the dataset has {len(images)} pairs, fewer than the {self.num_pairs} asked for")
    s = self.model.set_size
    tokens = self.tokenizer.encode(captions, self.max_len)
    ztxt = np.asarray(self._encode_text(params, jnp.asarray(tokens)))  # [N, D]
    x = np.stack(images).astype(np.float32)  # [N, H, W, 3] in [-1, 1]
    x = x.reshape((-1, s) + x.shape[1:])  # [G, S, H, W, 3]
    zt = ztxt.reshape(-1, s, ztxt.shape[-1])
    step = self.groups_per_batch
    zimg = np.concatenate([np.asarray(self._encode_images(params, batch_stats, x[g:g + step], zt[g:g + step]))
                           for g in range(0, len(x), step)]).reshape(len(images), -1)  # [N, D]
    return {**recall_at_k(zimg @ ztxt.T), "num_pairs": len(images)}

  def run(self, params: Any, batch_stats: Any) -> dict[str, dict[str, float]]:
    return {name: self.run_dataset(params, batch_stats, pairs()) for name, pairs in self.datasets.items()}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
  return {f"retrieval/{name}/{k}": v for name, r in results.items() for k, v in r.items() if "_r" in k}


def format_lines(results: dict[str, dict[str, float]]) -> list[str]:
  return [f"retrieval {task} ({r['num_pairs']} pairs): " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                                      if k != "num_pairs")
          for task, r in results.items()]


def demo_pairs(image_size: int, seed: int = 12345, stream: int = 100, object_scale: float = 1.0
               ) -> Callable[[], Iterable[tuple[Any, str]]]:
  """Held-out demo (image, caption) pairs: another seed and stream than training, every caption complete."""
  def pairs():
    source = demo.DemoSource(image_size, seed, two_objects_prob=0.0, partial_caption_prob=0.0, stream=stream,
                             object_scale=object_scale)
    i = 0
    while True:
      example = source[i]
      yield input_pipeline.to_model_image(example["image"]), example["caption"]
      i += 1
  return pairs


# ---- the config.evals entry ---------------------------------------------------------------------------------
def check_settings(where: str, s: dict[str, Any]) -> None:
  settings.check_common(where, s)
  settings.require_data(where, s)
  settings.check_data(where, s)
  if settings.uses_demo(s) and s["pp"]:
    raise ConfigError(f"{where}.pp must be '' on the demo data (rendered at config.data.image_size)")


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any, mesh: jax.sharding.Mesh, name: str,
          s: dict[str, Any]) -> tuple[RetrievalEvaluator, list[str]]:
  """(the evaluator of config.evals.<name>, its task names)."""
  data = s["data"]
  if data["name"] == "demo":
    pairs = demo_pairs(config.data.image_size, object_scale=config.data.get("object_scale", 1.0))
  else:
    pairs = eval_data.pairs(eval_data.pair_source(data), config.data.image_size, s["pp"])
  evaluator = RetrievalEvaluator(model, tokenizer, config.data.max_len, {settings.task_name(name, "retrieval"): pairs},
                                 s["num_pairs"], max(s["batch_size"] // model.set_size, 1))
  return evaluator, list(evaluator.datasets)
