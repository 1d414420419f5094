"""Evaluator registry: config.evals maps an evaluator name to its settings.

  config.evals.zeroshot = {tasks: 'demo', n_eval: 512, batch_size: 128}
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections

from hyperclip_jax.config import ConfigError
from hyperclip_jax.evaluators import zeroshot
from hyperclip_jax.evaluators.zeroshot import format_table

TASK_SETS = ("demo",)


def _demo_tasks(config: ml_collections.ConfigDict,
                settings: ml_collections.ConfigDict) -> list[zeroshot.ClassificationTask]:
  from hyperclip_jax.data import input_pipeline  # late: only the demo needs them
  from hyperclip_jax.data.sources import demo
  tasks = demo.demo_tasks(config.data.image_size, settings.n_eval)
  return [zeroshot.ClassificationTask(
      t.name, t.class_names, t.templates,
      functools.partial(input_pipeline.make_eval_batches, t, settings.batch_size)) for t in tasks.values()]


def build(config: ml_collections.ConfigDict, model: Any, tokenizer: Any,
          mesh: jax.sharding.Mesh) -> zeroshot.ZeroShotEvaluator:
  """The evaluator for config.evals (for now: zero-shot classification on a named task set)."""
  unknown = set(config.evals.keys()) - {"zeroshot"}
  if unknown:
    raise ConfigError(f"config.evals.{sorted(unknown)[0]} is an unknown evaluator; known: zeroshot")
  settings = config.evals.zeroshot
  if settings.tasks not in TASK_SETS:
    raise ConfigError(f"config.evals.zeroshot.tasks={settings.tasks!r} is unknown; known: {', '.join(TASK_SETS)}")
  return zeroshot.ZeroShotEvaluator(model, tokenizer, _demo_tasks(config, settings), config.data.max_len, mesh)


__all__ = ["build", "format_table"]
