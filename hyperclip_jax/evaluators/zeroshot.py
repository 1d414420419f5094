"""Zero-shot classification: the HyperCLIP deployment story, measured.

class names x templates -> text tower -> per-class mean embedding (renormalised) [C, D]
  -> hypernet over the task's class set (siglip: skipped) -> image tower with those norm params
  -> logits = zimg @ zclsᵀ -> top-1 / top-5.
The image tower runs in eval mode (BatchNorm running averages), with the whole eval set as one group.
`condition_texts` replaces the class set as the hypernet's input by fixed texts (e.g. ordinary training
captions), read as `condition_sets` sets of equal size whose generated norm params are averaged: the same norm
params for every task, an ablation of how the set is chosen at test time. `recalibrate` (recalibrate_bn=N > 0)
re-estimates the BatchNorm running stats of each task under its generated norm params over N held-out training
images before its test images are embedded (recalibrate.py); its results go under '<task>_bn<N>'.

config.evals entries of type 'zeroshot' (SETTINGS): tasks (comma list of: demo, demo:NAME, imagenet, cifar100,
cifar10) or data; classes, templates, pp, n_eval, batch_size, condition (CONDITIONS), condition_sets, workers,
recalibrate_bn.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hyperclip_jax import sharding
from hyperclip_jax.config import ConfigError
from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data.sources import demo
from hyperclip_jax.evaluators import conditioning, eval_data, recalibrate, settings, tasks
from hyperclip_jax.models import two_towers

SETTINGS: settings.Settings = {
    "tasks": (str, ""), "data": (dict, None), "classes": (str, ""), "templates": (str, ""), "pp": (str, ""),
    "n_eval": (int, 0), "batch_size": (int, 256), "condition": (str, "classes"), "condition_sets": (int, 64),
    "workers": (int, 0), "recalibrate_bn": (int, 0)}
# `condition`: what the hypernet reads. wrong_task: the class set of the next task of this evaluator (a control:
# a model that conditions usefully should lose accuracy under it; one that ignores its set should not)
CONDITIONS = ("classes", "train_captions", "train_sets_mean", "wrong_task")
BARE_KEYS = True  # results go under each task's own name (final_eval.json's format), not zeroshot/<task>


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """A labelled image set with class names and prompt templates ('a photo of a {}.')."""
  name: str
  class_names: Sequence[str]
  templates: Sequence[str]
  # callable () or (process_index=, process_count=) -> iterable of (images [b, H, W, 3] float32, labels [b] int32);
  # with several processes, this host's rows of each global batch, the same count on every host (label -1: pad)
  batches: Any


class ZeroShotEvaluator:
  """Runs every task; results are {task: {'top1', 'top5', 'chance', 'num_classes', 'num_images'}}."""

  def __init__(self, model: two_towers.TwoTowers, tokenizer: Any, tasks: Iterable[ClassificationTask],
               max_len: int, mesh: jax.sharding.Mesh, condition_texts: Sequence[str] | None = None,
               condition_sets: int = 1, wrong_task: bool = False,
               recalibrator: recalibrate.Recalibrator | None = None):
    self.model, self.tokenizer, self.tasks, self.max_len, self.mesh = model, tokenizer, list(tasks), max_len, mesh
    self.condition_texts = list(condition_texts) if condition_texts else None  # None: each task's class set
    if self.condition_texts is not None and (condition_sets < 1 or len(self.condition_texts) % condition_sets):
      raise ValueError(f"{len(self.condition_texts)} conditioning texts do not split into {condition_sets} sets")
    self.condition_sets = condition_sets
    if wrong_task and (self.condition_texts is not None or len(self.tasks) < 2):
      raise ValueError("condition='wrong_task' needs at least two tasks (each is conditioned on the next one's "
                       "classes) and no fixed conditioning texts")
    self.wrong_task = wrong_task
    self.recalibrator = recalibrator  # None: the running stats as trained
    self._encode_text = jax.jit(model.encode_text)
    self._generate = jax.jit(model.generate_mean)
    # The image tower is compiled once per batch shape, whatever the task's class count: the logits against
    # the class embeddings are a small matmul outside it. Every host reads all embeddings.
    self._embed_images = jax.jit(self._image_embeddings, out_shardings=sharding.replicated(mesh))
    # Several processes: each host decodes 1/P of the images and passes its rows of a global batch; the
    # embeddings and labels come back whole on every host, so every host computes the same metrics.
    self._embed_rows = jax.jit(lambda p, s, x, y, g: (self._image_embeddings(p, s, x, g), y),
                               out_shardings=sharding.replicated(mesh))
    self._n_dev = mesh.size

  def _image_embeddings(self, params, batch_stats, images, generated):
    zimg, _ = self.model.encode_image(params, batch_stats, images[None], generated, train=False)
    return zimg[0]  # [b, D]

  def class_embeddings(self, params: Any, class_names: Sequence[str], templates: Sequence[str]) -> jax.Array:
    """Per-class mean of the templated prompt embeddings, renormalised: [C, D]."""
    texts = [t.format(c) for c in class_names for t in templates]
    tokens = self.tokenizer.encode(texts, self.max_len)
    rows = max(64, 1 << (len(texts) - 1).bit_length())  # a power-of-two bucket: few text-tower compiles
    tokens = np.concatenate([tokens, np.zeros((rows - len(texts),) + tokens.shape[1:], tokens.dtype)])
    z = self._encode_text(params, jnp.asarray(tokens))[:len(texts)].reshape(len(class_names), len(templates), -1)
    return two_towers.l2_normalize(z.mean(1))

  def run_task(self, params: Any, batch_stats: Any, task: ClassificationTask,
               condition_task: ClassificationTask | None = None) -> dict[str, float]:
    """Top-1/top-5 of `task`, the hypernet conditioned on its classes (or on condition_task's classes)."""
    zcls = self.class_embeddings(params, task.class_names, task.templates)
    if condition_task is not None:  # another task's class set; the logits stay against this task's classes
      zother = self.class_embeddings(params, condition_task.class_names, condition_task.templates)
      generated = self._generate(params, zother[None])
    elif self.condition_texts is None:
      generated = self._generate(params, zcls[None])  # one set: the task's classes
    else:  # the fixed texts, each embedded as it is, as condition_sets sets; their norm params averaged
      zset = self.class_embeddings(params, self.condition_texts, ["{}"])  # [N, D]
      generated = self._generate(params, zset.reshape(self.condition_sets, -1, zset.shape[-1]))  # [1, C] leaves
    if self.recalibrator is not None:  # this task's running stats under its Θ'; the caller's are not touched
      batch_stats = self.recalibrator(params, batch_stats, generated)
    zcls_t = np.asarray(zcls, np.float32).T  # [D, C]
    k = min(5, len(task.class_names))
    hits1 = hitsk = n = 0
    for zimg, labels in self._embedded_batches(params, batch_stats, task, generated):
      logits = zimg @ zcls_t  # [b, C]
      topk = np.argsort(-logits, axis=1)[:, :k]
      hits1 += int((topk[:, 0] == labels).sum())
      hitsk += int((topk == labels[:, None]).any(1).sum())
      n += len(labels)
    # top5 is top-min(5, C): 1.0 by definition for tasks of fewer than 5 classes.
    return {"top1": hits1 / n, "top5": hitsk / n,
            "chance": 1.0 / len(task.class_names), "num_classes": len(task.class_names), "num_images": n}

  def result_name(self, task: str) -> str:
    """The results key of a task: its name, or '<name>_bn<N>' under recalibrate_bn=N."""
    return f"{task}_bn{len(self.recalibrator.images)}" if self.recalibrator is not None else task

  def _embedded_batches(self, params: Any, batch_stats: Any, task: ClassificationTask, generated: Any):
    """(image embeddings f32 [b, D], labels [b]) of every eval image, on every host; one process reads all
    images, several read 1/P each (padding rows, label -1, are dropped here)."""
    count = jax.process_count()
    batch_sharding = sharding.batch_sharding(self.mesh)
    # one process: the zero-argument call every batches callable supports (e.g. a functools.partial of a reader)
    batches = task.batches() if count == 1 else task.batches(process_index=jax.process_index(), process_count=count)
    for images, labels in batches:
      if count > 1:
        if images.shape[0] % jax.local_device_count():
          raise ValueError(f"zero-shot task {task.name}: {images.shape[0]} images per host do not split over "
                           f"{jax.local_device_count()} local devices; use an eval batch_size that is a multiple "
                           f"of the {jax.device_count()} devices")
        rows = [jax.make_array_from_process_local_data(batch_sharding, x) for x in (images, labels)]
        zimg, labels = (np.asarray(x) for x in self._embed_rows(params, batch_stats, rows[0], rows[1], generated))
        keep = labels >= 0
        yield zimg[keep], labels[keep]
        continue
      b = images.shape[0]
      pad = (-b) % self._n_dev  # keep the batch divisible over the mesh; padded rows are dropped below
      if pad:
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      zimg = self._embed_images(params, batch_stats, jax.device_put(images, batch_sharding), generated)
      yield np.asarray(zimg)[:b], labels

  def run(self, params: Any, batch_stats: Any) -> dict[str, dict[str, float]]:
    if jax.process_count() > 1:
      print(f"zero-shot: host {jax.process_index()} of {jax.process_count()} decodes 1/{jax.process_count()} of "
            f"each eval set", file=sys.stderr, flush=True)
    n = len(self.tasks)
    return {self.result_name(t.name): self.run_task(params, batch_stats, t, self.tasks[(i + 1) % n] if self.wrong_task else None)
            for i, t in enumerate(self.tasks)}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
  return {f"zeroshot/{task}/{k}": v for task, r in results.items() for k, v in r.items() if k.startswith("top")}


def format_table(results: dict[str, dict[str, float]]) -> str:
  """A plain-text table of zero-shot top-1 per task next to chance level."""
  width = max([len("task")] + [len(t) for t in results])
  lines = [f"{'task':<{width}}  classes  top1    chance  top1/chance", "-" * (width + 41)]
  for task, r in results.items():
    lines.append(f"{task:<{width}}  {r['num_classes']:>7d}  {r['top1']:6.3f}  {r['chance']:6.3f}  "
                 f"{r['top1'] / r['chance']:6.2f}x")
  return "\n".join(lines)


def format_lines(results: dict[str, dict[str, float]]) -> list[str]:
  return [format_table(results)] if results else []


# ---- the config.evals entry ---------------------------------------------------------------------------------
def check_settings(where: str, s: dict[str, Any]) -> None:
  settings.check_common(where, s)
  if s["condition"] not in CONDITIONS:
    raise ConfigError(f"{where}.condition={s['condition']!r} is unknown; known: {', '.join(CONDITIONS)}")
  if bool(s["tasks"]) == (s["data"] is not None):
    raise ConfigError(f"{where} needs exactly one of tasks= (e.g. 'demo' or 'imagenet,cifar100') and data=")
  known = ("demo", *eval_data.PRESETS)
  for task in s["tasks"].split(",") if s["tasks"] else ():
    task = task.strip()
    if task.startswith("demo:"):
      if task[5:] not in demo.DEMO_TASK_NAMES:
        raise ConfigError(f"{where}.tasks: demo task {task[5:]!r} is unknown; known: "
                          f"{', '.join(demo.DEMO_TASK_NAMES)} (as demo:NAME)")
    elif task not in known:
      raise ConfigError(f"{where}.tasks={s['tasks']!r} is unknown; known: {', '.join(known)}, demo:NAME (comma "
                        "separated)")
  settings.check_data(where, s)
  n, b = s["recalibrate_bn"], s["batch_size"]
  if n < 0 or (n > b and n % b):
    raise ConfigError(f"{where}.recalibrate_bn={n} must be 0 (off), at most batch_size={b}, or a multiple of it")
  if settings.uses_demo(s) and s["n_eval"] < 1:
    raise ConfigError(f"{where}.n_eval={s['n_eval']} must be at least 1 on the procedural demo data")


def tasks_for(config: ml_collections.ConfigDict, name: str, s: dict[str, Any]) -> list[ClassificationTask]:
  """The tasks of config.evals.<name>: the `tasks` presets (each demo task on its own), then `data`."""
  where, size = f"config.evals.{name}", config.data.image_size
  specs = []  # (task name, data, settings)
  for task in [t.strip() for t in s["tasks"].split(",")] if s["tasks"] else []:
    if task == "demo" or task.startswith("demo:"):  # every demo task, or the one named
      specs.append((task, {"name": "demo", "tasks": task[5:]}, s))
    else:
      data, classes, templates = eval_data.PRESETS[task]
      specs.append((task, data, {**s, "classes": s["classes"] or classes, "templates": s["templates"] or templates}))
  if s["data"] is not None:
    specs.append((settings.task_name(name, "zeroshot"), s["data"], s))
  out = []
  for task, data, ts in specs:
    if data["name"] == "demo":
      demo_tasks = demo.demo_tasks(size, ts["n_eval"], object_scale=config.data.get("object_scale", 1.0))
      for t in eval_data.demo_task_names(data) or demo_tasks:
        if t not in demo_tasks:
          raise ValueError(f"{where}.data.tasks: demo task {t!r} is unknown; known: {', '.join(demo_tasks)}")
        t = demo_tasks[t]
        out.append(ClassificationTask(t.name, t.class_names, t.templates, _demo_batches(t, ts["batch_size"])))
      continue
    source, names, templates = tasks.labelled(data, ts, where)
    batches = eval_data.labelled_batches(source, size, ts["batch_size"], ts["pp"], ts["n_eval"], ts["workers"])
    out.append(ClassificationTask(task, names, templates, batches))
  return out


def _demo_batches(task: Any, batch_size: int) -> Any:
  """A demo task's batches callable: (process_index=0, process_count=1) -> iterator (see ClassificationTask)."""
  def batches(process_index: int = 0, process_count: int = 1):
    return input_pipeline.make_eval_batches(task, batch_size, pad_last=process_count > 1,
                                            process_index=process_index, process_count=process_count)
  return batches


def _condition_sets(s: dict[str, Any]) -> int:
  return s["condition_sets"] if s["condition"] == "train_sets_mean" else 1


def _condition_texts(config: ml_collections.ConfigDict, name: str, s: dict[str, Any]) -> list[str] | None:
  """The fixed conditioning texts of condition='train_captions' (one set) or 'train_sets_mean' (condition_sets
  sets, consecutive), None for 'classes'."""
  if s["condition"] in ("classes", "wrong_task"):
    return None
  try:
    return conditioning.condition_captions(config, _condition_sets(s))
  except ValueError as e:
    raise ValueError(f"config.evals.{name}.condition={s['condition']!r}: {e}") from None


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any, mesh: jax.sharding.Mesh, name: str,
          s: dict[str, Any]) -> tuple[ZeroShotEvaluator, list[str]]:
  """(the evaluator of config.evals.<name>, its task names)."""
  evaluator = ZeroShotEvaluator(model, tokenizer, tasks_for(config, name, s), config.data.max_len, mesh,
                                _condition_texts(config, name, s), _condition_sets(s),
                                wrong_task=s["condition"] == "wrong_task",
                                recalibrator=_recalibrator(config, model, mesh, name, s))
  return evaluator, [evaluator.result_name(t.name) for t in evaluator.tasks]


def _recalibrator(config: ml_collections.ConfigDict, model: Any, mesh: jax.sharding.Mesh, name: str,
                  s: dict[str, Any]) -> recalibrate.Recalibrator | None:
  try:
    return recalibrate.build(config, model, mesh, s["recalibrate_bn"], s["batch_size"])
  except ValueError as e:
    raise ValueError(f"config.evals.{name}: {e}") from None
