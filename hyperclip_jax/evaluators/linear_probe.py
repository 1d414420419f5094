"""Linear probe: a softmax regression on frozen image embeddings, fitted on a train split, scored on a test split.

The features are the image tower's L2-normalised embeddings zimg [N, D] (eval mode). A hyperclip model's
image tower is conditioned, as in zero-shot use, on the hypernet over the task's class-name embeddings
(per-class mean over the templates); siglip needs no conditioning. The regression is standardised,
L2-regularised and fitted full-batch with Adam (convex: the result does not depend on the start).

config.evals entries of type 'linear_probe' (SETTINGS): data (the test split), train_data (keys that differ
from data, e.g. dict(split='train')), classes, templates, pp, n_train, n_eval, batch_size, workers.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hyperclip_jax.config import ConfigError
from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.sources import demo
from hyperclip_jax.evaluators import eval_data, settings, tasks
from hyperclip_jax.models import two_towers

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # () -> (images f32 [b,H,W,3] in [-1,1], labels)
SETTINGS: settings.Settings = {
    "data": (dict, None), "train_data": (dict, {}), "classes": (str, ""), "templates": (str, ""), "pp": (str, ""),
    "n_train": (int, 1000), "n_eval": (int, 1000), "batch_size": (int, 256), "workers": (int, 0)}
BARE_KEYS = False  # results go under linear_probe/<task>


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


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
  return {f"linear_probe/{task}/top1": r["top1"] for task, r in results.items()}


def format_lines(results: dict[str, dict[str, float]]) -> list[str]:
  return [f"linear probe {task}: top1 {r['top1']:.3f} (chance {r['chance']:.3f}, {r['num_train']} train, "
          f"{r['num_test']} test)" for task, r in results.items()]


def demo_tasks(image_size: int, num_train: int, num_test: int, batch_size: int = 64,
               names: Sequence[str] | None = None, object_scale: float = 1.0
               ) -> list[tuple[str, Sequence[str], Sequence[str], Batches, Batches]]:
  """The demo zero-shot tasks as probe tasks: train examples from another seed than the test examples."""
  train = demo.demo_tasks(image_size, num_train, seed=777, object_scale=object_scale)
  test = demo.demo_tasks(image_size, num_test, object_scale=object_scale)
  return [(n, test[n].class_names, test[n].templates,
           functools.partial(input_pipeline.make_eval_batches, train[n], batch_size),
           functools.partial(input_pipeline.make_eval_batches, test[n], batch_size))
          for n in (names or test)]


# ---- the config.evals entry ---------------------------------------------------------------------------------
def check_settings(where: str, s: dict[str, Any]) -> None:
  settings.check_common(where, s)
  settings.require_data(where, s)
  settings.check_data(where, s)
  if settings.uses_demo(s) and s["n_eval"] < 1:
    raise ConfigError(f"{where}.n_eval={s['n_eval']} must be at least 1 on the procedural demo data")


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any, mesh: jax.sharding.Mesh, name: str,
          s: dict[str, Any]) -> tuple[LinearProbeEvaluator, list[str]]:
  """(the evaluator of config.evals.<name>, its task names)."""
  data, size, where = s["data"], config.data.image_size, f"config.evals.{name}"
  if data["name"] == "demo":
    probe_tasks = demo_tasks(size, s["n_train"], s["n_eval"], s["batch_size"], eval_data.demo_task_names(data),
                             object_scale=config.data.get("object_scale", 1.0))
  else:
    test, names, templates = tasks.labelled(data, s, where)
    train = eval_data.labelled_source({**data, **s["train_data"]}, names)
    probe_tasks = [(settings.task_name(name, "linear_probe"), names, templates,
                    eval_data.labelled_batches(train, size, s["batch_size"], s["pp"], s["n_train"], s["workers"]),
                    eval_data.labelled_batches(test, size, s["batch_size"], s["pp"], s["n_eval"], s["workers"]))]
  evaluator = LinearProbeEvaluator(model, tokenizer, config.data.max_len, probe_tasks)
  return evaluator, [t[0] for t in evaluator.tasks]
