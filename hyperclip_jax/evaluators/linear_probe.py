"""Linear probe: a softmax regression on frozen image embeddings, fitted on a train split, scored on a test split.

The features are the image tower's L2-normalised embeddings zimg [N, D] (eval mode). A hyperclip model's
image tower is conditioned, as in zero-shot use, on the hypernet over the task's class-name embeddings
(per-class mean over the templates); siglip needs no conditioning. The regression is standardised,
L2-regularised and fitted full-batch with Adam (convex: the result does not depend on the start).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperclip_jax.models import two_towers

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # () -> (images f32 [b,H,W,3] in [-1,1], labels)


def fit_softmax_regression(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-4,
                           steps: int = 500, lr: float = 0.05) -> Callable[[np.ndarray], np.ndarray]:
  """Fits softmax regression on x [N, F], y [N]; returns predict(x [M, F]) -> logits [M, num_classes]."""
  mean, std = x.mean(0), x.std(0) + 1e-6
  xs = jnp.asarray((x - mean) / std)
  onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = xs @ p["w"] + p["b"]
    return optax.softmax_cross_entropy(logits, onehot).mean() + l2 * jnp.sum(jnp.square(p["w"]))

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, opt = carry
      updates, opt = tx.update(jax.grad(loss)(p), opt, p)
      return (optax.apply_updates(p, updates), opt), None
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p

  fitted = jax.device_get(fit(params))
  return lambda z: ((np.asarray(z) - mean) / std) @ fitted["w"] + fitted["b"]


class LinearProbeEvaluator:
  """Runs every task; results are {task: {'top1', 'chance', 'num_train', 'num_test'}}."""

  def __init__(self, model: two_towers.TwoTowers, tokenizer: Any, max_len: int,
               tasks: Sequence[tuple[str, Sequence[str], Sequence[str], Batches, Batches]]):
    """tasks: (name, class names, templates, train batches, test batches)."""
    self.model, self.tokenizer, self.max_len, self.tasks = model, tokenizer, max_len, list(tasks)
    self._encode_text = jax.jit(model.encode_text)
    self._generate = jax.jit(model.generate)
    self._embed = jax.jit(lambda p, bs, x, g: model.encode_image(p, bs, x[None], g, train=False)[0][0])

  def _features(self, params, batch_stats, batches: Batches, generated) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for images, y in batches():
      keep = y >= 0  # padded rows are labelled -1
      feats.append(np.asarray(self._embed(params, batch_stats, jnp.asarray(images), generated))[keep])
      labels.append(np.asarray(y)[keep])
    return np.concatenate(feats), np.concatenate(labels)

  def run(self, params: Any, batch_stats: Any) -> dict[str, dict[str, float]]:
    results = {}
    for name, class_names, templates, train, test in self.tasks:
      texts = [t.format(c) for c in class_names for t in templates]
      z = self._encode_text(params, jnp.asarray(self.tokenizer.encode(texts, self.max_len)))
      zcls = two_towers.l2_normalize(z.reshape(len(class_names), len(templates), -1).mean(1))
      generated = self._generate(params, zcls[None])
      x_train, y_train = self._features(params, batch_stats, train, generated)
      x_test, y_test = self._features(params, batch_stats, test, generated)
      predict = fit_softmax_regression(x_train, y_train, len(class_names))
      top1 = float((predict(x_test).argmax(1) == y_test).mean())
      results[name] = {"top1": top1, "chance": 1.0 / len(class_names), "num_train": len(y_train),
                       "num_test": len(y_test)}
    return results

  @staticmethod
  def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"linear_probe/{task}/top1": r["top1"] for task, r in results.items()}


def demo_tasks(image_size: int, num_train: int, num_test: int, batch_size: int = 64,
               names: Sequence[str] | None = None, object_scale: float = 1.0
               ) -> list[tuple[str, Sequence[str], Sequence[str], Batches, Batches]]:
  """The demo zero-shot tasks as probe tasks: train examples from another seed than the test examples."""
  import functools

  from hyperclip_jax.data import input_pipeline
  from hyperclip_jax.data.sources import demo
  train = demo.demo_tasks(image_size, num_train, seed=777, object_scale=object_scale)
  test = demo.demo_tasks(image_size, num_test, object_scale=object_scale)
  return [(n, test[n].class_names, test[n].templates,
           functools.partial(input_pipeline.make_eval_batches, train[n], batch_size),
           functools.partial(input_pipeline.make_eval_batches, test[n], batch_size))
          for n in (names or test)]
