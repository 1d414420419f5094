"""Evaluator registry: config.evals maps a name to one evaluator's settings, big_vision style.

  c.evals.zeroshot = dict(tasks='demo', n_eval=512, batch_size=128)     # type defaults to a name that is one
  c.evals.zeroshot_cifar100 = dict(
      type='zeroshot', data=dict(name='tfds', dataset='cifar100', split='test'), classes='cifar100',
      templates='cifar', pp='resize(32)|value_range(-1, 1)', n_eval=0, batch_size=256)
  c.evals.retrieval_coco = dict(type='retrieval', data=dict(name='tfds', dataset='coco_captions', split='val'),
                                num_pairs=5000)
  c.evals.linear_probe_cifar10 = dict(type='linear_probe', data=dict(name='tfds', dataset='cifar10',
                                      split='test'), train_data=dict(split='train'), n_train=10000)

Keys per type (all optional; `type` is needed where the name is not a type):
  zeroshot      tasks (comma list of: demo, demo:NAME (one demo task), imagenet, cifar100, cifar10) or data;
                classes, templates, pp, n_eval (0: the whole split; demo: at least 1), batch_size, condition
                (what the hypernet reads: 'classes' = each task's class prompts; 'train_captions' = the first
                set_size captions of the training source at seed 0, one fixed set for every task;
                'train_sets_mean' = the norm params averaged over the first condition_sets such sets),
                condition_sets (default 64), workers (grain processes decoding tfds/manifest images; 0: inline)
  retrieval     data (default: the demo pairs), pp, num_pairs, batch_size
  linear_probe  data (the test split), train_data (keys that differ from data, e.g. dict(split='train')),
                classes, templates, pp, n_train, n_eval, batch_size, workers
data: see eval_data.py (tfds, manifest, demo). classes: a classnames.py spec (imagenet1k, cifar100, cifar10,
demo:TASK, FILE); '' = the TFDS dataset's own label names. templates: imagenet1k, cifar, default or FILE; '' =
those of `classes`. The metric names are <type>/<task>/<metric> (zeroshot/<task>/top1|top5,
retrieval/<task>/i2t_r1 .. t2i_r10, linear_probe/<task>/top1); <task> is the name less a leading '<type>_'
(zeroshot_cifar100 -> cifar100), or for demo data and `tasks` presets each task's own name.
Every config problem is a one-line ConfigError from validate(), which config.validate runs before anything
compiles.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections

from hyperclip_jax.config import ConfigError
from hyperclip_jax.evaluators import eval_data, zeroshot
from hyperclip_jax.evaluators.zeroshot import format_table as _zeroshot_table

# type -> {key: (python type, default)}; data dicts are checked by eval_data.check
KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "zeroshot": {"tasks": (str, ""), "data": (dict, None), "classes": (str, ""), "templates": (str, ""),
                 "pp": (str, ""), "n_eval": (int, 0), "batch_size": (int, 256), "condition": (str, "classes"),
                 "condition_sets": (int, 64), "workers": (int, 0)},
    "retrieval": {"data": (dict, {"name": "demo"}), "pp": (str, ""), "num_pairs": (int, 512),
                  "batch_size": (int, 256)},
    "linear_probe": {"data": (dict, None), "train_data": (dict, {}), "classes": (str, ""), "templates": (str, ""),
                     "pp": (str, ""), "n_train": (int, 1000), "n_eval": (int, 1000), "batch_size": (int, 256),
                     "workers": (int, 0)},
}
TYPES = tuple(KEYS)
CONDITIONS = ("classes", "train_captions", "train_sets_mean")  # zeroshot `condition`: what the hypernet reads


def _settings(name: str, raw: Any) -> tuple[str, dict[str, Any]]:
  """(type, settings with defaults filled in) of config.evals.<name>; ConfigError on unknown types or keys."""
  if not isinstance(raw, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f"config.evals.{name} must be a dict of settings, e.g. dict(type='zeroshot', ...)")
  raw = eval_data.as_dict(raw)
  kind = raw.pop("type", name)
  if kind not in KEYS:
    if kind == name:
      raise ConfigError(f"config.evals.{name} has no type; set config.evals.{name}.type to one of: {', '.join(TYPES)}")
    raise ConfigError(f"config.evals.{name}.type={kind!r} is unknown; known: {', '.join(TYPES)}")
  out = {}
  for key, (typ, default) in KEYS[kind].items():
    value = raw.pop(key, default)
    if typ is dict:
      if value is not None and not isinstance(value, dict):
        raise ConfigError(f"config.evals.{name}.{key}={value!r} must be a dict, e.g. dict(name='tfds', ...)")
      value = eval_data.as_dict(value) if value is not None else None
    elif not isinstance(value, typ) or isinstance(value, bool):
      raise ConfigError(f"config.evals.{name}.{key}={value!r} must be a {typ.__name__}")
    out[key] = value
  if raw:
    raise ConfigError(f"config.evals.{name}.{sorted(raw)[0]} is unknown for type {kind!r}; known: "
                      f"{', '.join(['type', *KEYS[kind]])}")
  return kind, out


def _check(name: str, kind: str, s: dict[str, Any]) -> None:
  where = f"config.evals.{name}"
  for key in ("batch_size", "num_pairs", "n_train", "condition_sets"):
    if key in s and s[key] < 1:
      raise ConfigError(f"{where}.{key}={s[key]} must be at least 1")
  if s.get("n_eval", 0) < 0:
    raise ConfigError(f"{where}.n_eval={s['n_eval']} must be >= 0 (0: the whole split)")
  if s.get("workers", 0) < 0:
    raise ConfigError(f"{where}.workers={s['workers']} must be >= 0 (0: decode in this process)")
  if kind == "zeroshot":
    if s["condition"] not in CONDITIONS:
      raise ConfigError(f"{where}.condition={s['condition']!r} is unknown; known: {', '.join(CONDITIONS)}")
    if bool(s["tasks"]) == (s["data"] is not None):
      raise ConfigError(f"{where} needs exactly one of tasks= (e.g. 'demo' or 'imagenet,cifar100') and data=")
    known = ("demo", *eval_data.PRESETS)
    for task in s["tasks"].split(",") if s["tasks"] else ():
      task = task.strip()
      if task.startswith("demo:"):
        from hyperclip_jax.data.sources import demo
        if task[5:] not in demo.DEMO_TASK_NAMES:
          raise ConfigError(f"{where}.tasks: demo task {task[5:]!r} is unknown; known: "
                            f"{', '.join(demo.DEMO_TASK_NAMES)} (as demo:NAME)")
      elif task not in known:
        raise ConfigError(f"{where}.tasks={s['tasks']!r} is unknown; known: {', '.join(known)}, demo:NAME (comma "
                          "separated)")
  elif s["data"] is None:
    raise ConfigError(f"{where}.data is missing; e.g. dict(name='tfds', dataset='cifar10', split='test')")
  for key in ("data", "train_data"):
    if s.get(key) is not None and (key == "data" or s[key]):
      data = {**s["data"], **s[key]} if key == "train_data" else s[key]
      problem = eval_data.check(data, f"{where}.{key}")
      if problem:
        raise ConfigError(problem)
  uses_demo = (any(t.strip().split(":")[0] == "demo" for t in s.get("tasks", "").split(","))
               or (s.get("data") or {}).get("name") == "demo")
  if uses_demo and kind != "retrieval" and s["n_eval"] < 1:
    raise ConfigError(f"{where}.n_eval={s['n_eval']} must be at least 1 on the procedural demo data")
  if uses_demo and kind == "retrieval" and s.get("pp"):
    raise ConfigError(f"{where}.pp must be '' on the demo data (rendered at config.data.image_size)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks config.evals without opening any data; raises a one-line ConfigError naming the key."""
  evals = config.get("evals", None) or {}
  for name in evals:
    kind, s = _settings(name, evals[name])
    _check(name, kind, s)


def _task_name(name: str, kind: str) -> str:
  return name[len(kind) + 1:] if name.startswith(kind + "_") and len(name) > len(kind) + 1 else name


def _classes(s: dict[str, Any], source_names: Any, where: str) -> tuple[list[str], list[str]]:
  """(class names, templates) from the classes / templates settings, or the dataset's own label names."""
  from hyperclip_jax.evaluators import classnames
  try:
    if s["classes"]:
      names, templates = classnames.resolve(s["classes"])
    elif source_names:
      names, templates = list(source_names), list(classnames.DEFAULT_TEMPLATES)
    else:
      raise ValueError(f"{where}.classes is missing and the dataset has no label names; give a class list")
    if s["templates"]:
      templates = classnames.templates(s["templates"])
  except classnames.ClassListError as e:
    raise ValueError(f"{where}: {e}") from None
  return names, templates


def _labelled(data: dict[str, Any], s: dict[str, Any], where: str) -> tuple[Any, list[str], list[str]]:
  """(labelled source, class names, templates); a TFDS dataset's label count must match the class list."""
  if data["name"] == "manifest":
    names, templates = _classes(s, None, where)
    return eval_data.labelled_source(data, names), names, templates
  source = eval_data.labelled_source(data, None)
  names, templates = _classes(s, source.class_names, where)
  if source.class_names and len(names) != len(source.class_names):
    raise ValueError(f"{where}.classes={s['classes']!r} has {len(names)} names but {data['dataset']} has "
                     f"{len(source.class_names)} labels")
  return source, names, templates


def _zeroshot_tasks(config: ml_collections.ConfigDict, name: str, s: dict[str, Any]
                    ) -> list[zeroshot.ClassificationTask]:
  from hyperclip_jax.data import input_pipeline
  from hyperclip_jax.data.sources import demo
  where, size = f"config.evals.{name}", config.data.image_size
  specs = []  # (task name, data, settings)
  for task in [t.strip() for t in s["tasks"].split(",")] if s["tasks"] else []:
    if task == "demo" or task.startswith("demo:"):  # every demo task, or the one named
      specs.append((task, {"name": "demo", "tasks": task[5:]}, s))
    else:
      data, classes, templates = eval_data.PRESETS[task]
      specs.append((task, data, {**s, "classes": s["classes"] or classes, "templates": s["templates"] or templates}))
  if s["data"] is not None:
    specs.append((_task_name(name, "zeroshot"), s["data"], s))
  tasks = []
  for task, data, ts in specs:
    if data["name"] == "demo":
      demo_tasks = demo.demo_tasks(size, ts["n_eval"], object_scale=config.data.get("object_scale", 1.0))
      for t in eval_data.demo_task_names(data) or demo_tasks:
        if t not in demo_tasks:
          raise ValueError(f"{where}.data.tasks: demo task {t!r} is unknown; known: {', '.join(demo_tasks)}")
        t = demo_tasks[t]
        tasks.append(zeroshot.ClassificationTask(
            t.name, t.class_names, t.templates,
            functools.partial(input_pipeline.make_eval_batches, t, ts["batch_size"])))
      continue
    source, names, templates = _labelled(data, ts, where)
    batches = eval_data.labelled_batches(source, size, ts["batch_size"], ts["pp"], ts["n_eval"], ts["workers"])
    tasks.append(zeroshot.ClassificationTask(task, names, templates, batches))
  return tasks


def _condition_texts(config: ml_collections.ConfigDict, name: str, s: dict[str, Any]) -> list[str] | None:
  """The fixed conditioning texts of condition='train_captions' (one set) or 'train_sets_mean' (condition_sets
  sets, consecutive), None for 'classes'."""
  if s["condition"] == "classes":
    return None
  try:
    return condition_captions(config, _condition_sets(s))
  except ValueError as e:
    raise ValueError(f"config.evals.{name}.condition={s['condition']!r}: {e}") from None


def _condition_sets(s: dict[str, Any]) -> int:
  return s["condition_sets"] if s["condition"] == "train_sets_mean" else 1


def condition_captions(config: ml_collections.ConfigDict, sets: int) -> list[str]:
  """The first sets x set_size captions of the training source at seed 0: the fixed test-time conditioning
  texts of condition='train_captions' (sets=1) and 'train_sets_mean', consecutive set_size per set."""
  from hyperclip_jax.data import sources
  if config.data.get("name", "demo") in sources.STREAMING:
    raise ValueError(f"it needs a random-access training source; config.data.name={config.data.name!r} is "
                     "streamed: condition on the classes instead")
  source = sources.get_source(config.data, 0)
  n = config.model.hyper.set_size * sets
  if n > len(source):
    raise ValueError(f"{sets} conditioning set(s) of {config.model.hyper.set_size} captions need {n} training "
                     f"samples; the source has {len(source)}: use fewer sets")
  return [source[i]["caption"] for i in range(n)]


def _retrieval(config, model, tokenizer, name: str, s: dict[str, Any]) -> Any:
  from hyperclip_jax.evaluators import retrieval
  data = s["data"]
  if data["name"] == "demo":
    pairs = retrieval.demo_pairs(config.data.image_size, object_scale=config.data.get("object_scale", 1.0))
  else:
    pairs = eval_data.pairs(eval_data.pair_source(data), config.data.image_size, s["pp"])
  return retrieval.RetrievalEvaluator(model, tokenizer, config.data.max_len, {_task_name(name, "retrieval"): pairs},
                                      s["num_pairs"], max(s["batch_size"] // model.set_size, 1))


def _linear_probe(config, model, tokenizer, name: str, s: dict[str, Any]) -> Any:
  from hyperclip_jax.evaluators import linear_probe
  data, size, where = s["data"], config.data.image_size, f"config.evals.{name}"
  if data["name"] == "demo":
    tasks = linear_probe.demo_tasks(size, s["n_train"], s["n_eval"], s["batch_size"], eval_data.demo_task_names(data),
                                    object_scale=config.data.get("object_scale", 1.0))
  else:
    test, names, templates = _labelled(data, s, where)
    train = eval_data.labelled_source({**data, **s["train_data"]}, names)
    tasks = [(_task_name(name, "linear_probe"), names, templates,
              eval_data.labelled_batches(train, size, s["batch_size"], s["pp"], s["n_train"], s["workers"]),
              eval_data.labelled_batches(test, size, s["batch_size"], s["pp"], s["n_eval"], s["workers"]))]
  return linear_probe.LinearProbeEvaluator(model, tokenizer, config.data.max_len, tasks)


class Evaluators:
  """Every configured evaluator. run() -> {key: results}: a zero-shot task under its own name (the format of
  final_eval.json since the demo), the other types under '<type>/<task>'."""

  def __init__(self, parts: list[tuple[str, Any]]):
    self.parts = parts  # (type, evaluator)

  def run(self, params: Any, batch_stats: Any) -> dict[str, dict[str, float]]:
    results = {}
    for kind, evaluator in self.parts:
      for task, r in evaluator.run(params, batch_stats).items():
        results[task if kind == "zeroshot" else f"{kind}/{task}"] = r
    return results

  @staticmethod
  def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'zeroshot/colour/top1': ..., 'retrieval/coco/i2t_r1': ..., 'linear_probe/cifar10/top1': ...}."""
    out = {}
    for key, r in results.items():
      prefix = key if "/" in key else f"zeroshot/{key}"
      keep = (lambda k: "_r" in k) if prefix.startswith("retrieval/") else (lambda k: k.startswith("top"))
      out.update({f"{prefix}/{k}": v for k, v in r.items() if keep(k)})
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
  """The zero-shot table, then one line per retrieval and linear-probe result."""
  zs = {k: r for k, r in results.items() if "/" not in k}
  lines = [_zeroshot_table(zs)] if zs else []
  for key, r in results.items():
    if key.startswith("retrieval/"):
      lines.append(f"retrieval {key[len('retrieval/'):]} ({r['num_pairs']} pairs): "
                   + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "num_pairs"))
    elif key.startswith("linear_probe/"):
      lines.append(f"linear probe {key[len('linear_probe/'):]}: top1 {r['top1']:.3f} (chance {r['chance']:.3f}, "
                   f"{r['num_train']} train, {r['num_test']} test)")
  return "\n".join(lines)


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any, mesh: jax.sharding.Mesh) -> Evaluators:
  """The evaluators of config.evals, in config order. Data sources are opened here (a missing dataset fails
  before training starts); ValueErrors are config problems."""
  validate(config)
  parts, seen = [], {}
  evals = config.get("evals", None) or {}
  for name in evals:
    kind, s = _settings(name, evals[name])
    if kind == "zeroshot":
      evaluator = zeroshot.ZeroShotEvaluator(model, tokenizer, _zeroshot_tasks(config, name, s), config.data.max_len,
                                             mesh, _condition_texts(config, name, s), _condition_sets(s))
      tasks = [t.name for t in evaluator.tasks]
    elif kind == "retrieval":
      evaluator = _retrieval(config, model, tokenizer, name, s)
      tasks = list(evaluator.datasets)
    else:
      evaluator = _linear_probe(config, model, tokenizer, name, s)
      tasks = [t[0] for t in evaluator.tasks]
    for task in tasks:  # two evaluators writing the same metric would hide one of them
      if (kind, task) in seen:
        raise ConfigError(f"config.evals.{name} and config.evals.{seen[kind, task]} both give {kind}/{task}/...; "
                          "rename one")
      seen[kind, task] = name
    parts.append((kind, evaluator))
  return Evaluators(parts)


__all__ = ["CONDITIONS", "Evaluators", "KEYS", "TYPES", "build", "format_table", "validate"]
