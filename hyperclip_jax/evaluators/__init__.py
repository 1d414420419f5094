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
                'train_sets_mean' = the norm params averaged over the first condition_sets such sets;
                'wrong_task' = the next task's class prompts, a control),
                condition_sets (default 64), workers (grain processes decoding tfds/manifest images; 0: inline),
                recalibrate_bn (N > 0: each task's BatchNorm running stats re-estimated under its norm params
                over N held-out demo training images, results under '<task>_bn<N>'; 0: off; recalibrate.py)
  retrieval     data (default: the demo pairs), pp, num_pairs, batch_size
  linear_probe  data (the test split), train_data (keys that differ from data, e.g. dict(split='train')),
                classes, templates, pp, n_train, n_eval, batch_size, workers
data: see eval_data.py (tfds, manifest, demo). classes: a classnames.py spec (imagenet1k, cifar100, cifar10,
demo:TASK, FILE); '' = the TFDS dataset's own label names. templates: imagenet1k, cifar, default or FILE; '' =
those of `classes`. The metric names are <type>/<task>/<metric> (zeroshot/<task>/top1|top5,
retrieval/<task>/i2t_r1 .. t2i_r10, linear_probe/<task>/top1); <task> is the name less a leading '<type>_'
(zeroshot_cifar100 -> cifar100), or for demo data and `tasks` presets each task's own name.
Every config problem is a one-line ConfigError from validate(), which validation.validate runs before anything
compiles.

The registry: TYPES maps a type name to its module, which owns SETTINGS (keys and defaults), check_settings,
build, flat_metrics and format_lines (docs/evaluation.md, "Adding an evaluator type").
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import ml_collections

from hyperclip_jax.config import ConfigError
from hyperclip_jax.evaluators import eval_data, linear_probe, retrieval, settings, zeroshot
from hyperclip_jax.evaluators.conditioning import condition_captions

TYPES: dict[str, ModuleType] = {"zeroshot": zeroshot, "retrieval": retrieval, "linear_probe": linear_probe}
CONDITIONS = zeroshot.CONDITIONS


def settings_of(name: str, raw: Any) -> tuple[str, dict[str, Any]]:
  """(type, settings with defaults filled in) of config.evals.<name>; ConfigError on unknown types or keys."""
  if not isinstance(raw, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f"config.evals.{name} must be a dict of settings, e.g. dict(type='zeroshot', ...)")
  raw = eval_data.as_dict(raw)
  kind = raw.pop("type", name)
  if kind not in TYPES:
    if kind == name:
      raise ConfigError(f"config.evals.{name} has no type; set config.evals.{name}.type to one of: {', '.join(TYPES)}")
    raise ConfigError(f"config.evals.{name}.type={kind!r} is unknown; known: {', '.join(TYPES)}")
  return kind, settings.read(name, kind, raw, TYPES[kind].SETTINGS)


def fill_defaults(config: ml_collections.ConfigDict) -> None:
  """Writes each config.evals entry's unset settings (those with a non-None default) into it, so that a
  command-line override --config.evals.<name>.<key>=VALUE reaches a key the config left at its default. An
  entry that does not read is left alone (validate names its problem)."""
  evals = config.get("evals", None) or {}
  with config.unlocked():
    for name in evals:
      try:
        _, s = settings_of(name, evals[name])
      except ConfigError:
        continue
      for key, value in s.items():
        if value is not None and key not in evals[name]:
          evals[name][key] = value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks config.evals without opening any data; raises a one-line ConfigError naming the key."""
  evals = config.get("evals", None) or {}
  for name in evals:
    kind, s = settings_of(name, evals[name])
    TYPES[kind].check_settings(f"config.evals.{name}", s)


def _split_key(key: str) -> tuple[str, str]:
  """A results key -> (type, task): '<type>/<task>', or a bare task name of the type that keeps bare keys."""
  kind, sep, task = key.partition("/")
  if sep and kind in TYPES and not TYPES[kind].BARE_KEYS:
    return kind, task
  return next(k for k, module in TYPES.items() if module.BARE_KEYS), key


class Evaluators:
  """Every configured evaluator. run() -> {key: results}: a zero-shot task under its own name (the format of
  final_eval.json since the demo), the other types under '<type>/<task>'."""

  def __init__(self, parts: list[tuple[str, Any]]):
    self.parts = parts  # (type, evaluator)

  def run(self, params: Any, batch_stats: Any) -> dict[str, dict[str, float]]:
    results = {}
    for kind, evaluator in self.parts:
      for task, r in evaluator.run(params, batch_stats).items():
        results[task if TYPES[kind].BARE_KEYS else f"{kind}/{task}"] = r
    return results

  @staticmethod
  def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'zeroshot/colour/top1': ..., 'retrieval/coco/i2t_r1': ..., 'linear_probe/cifar10/top1': ...}."""
    out = {}
    for key, r in results.items():
      kind, task = _split_key(key)
      out.update(TYPES[kind].flat_metrics({task: r}))
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Each type's lines in registry order: the zero-shot table, then one line per retrieval and linear-probe result."""
  by_type: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in TYPES}
  for key, r in results.items():
    kind, task = _split_key(key)
    by_type[kind][task] = r
  return "\n".join(line for kind, module in TYPES.items() for line in module.format_lines(by_type[kind]))


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any, mesh: jax.sharding.Mesh) -> Evaluators:
  """The evaluators of config.evals, in config order. Data sources are opened here (a missing dataset fails
  before training starts); ValueErrors are config problems."""
  validate(config)
  parts, seen = [], {}
  evals = config.get("evals", None) or {}
  for name in evals:
    kind, s = settings_of(name, evals[name])
    evaluator, tasks = TYPES[kind].build(config, model, tokenizer, mesh, name, s)
    for task in tasks:  # two evaluators writing the same metric would hide one of them
      if (kind, task) in seen:
        raise ConfigError(f"config.evals.{name} and config.evals.{seen[kind, task]} both give {kind}/{task}/...; "
                          "rename one")
      seen[kind, task] = name
    parts.append((kind, evaluator))
  return Evaluators(parts)


__all__ = ["CONDITIONS", "Evaluators", "TYPES", "build", "condition_captions", "fill_defaults", "format_table",
           "settings_of", "validate"]
