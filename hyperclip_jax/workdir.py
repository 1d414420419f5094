"""A training run's workdir: created and written by the trainer, read back by the tools that come after it.

`create`, `write_text` are what the trainer puts there besides checkpoints and metrics (config.json,
final_eval.json); `read_config`, `load_run` give hyperclip-eval and hyperclip-export the resolved config and the
params of one checkpoint step (the trainer itself resumes through checkpoint.Checkpointer). A workdir is a local
directory or an object-store URI such as gs://bucket/run (hyperclip_jax.storage).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import storage


class RunError(ValueError):
  """A workdir that cannot be read back; the message says what to do."""


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  step: int
  params: Any
  batch_stats: Any

  @property
  def config_hash(self) -> str:
    """sha256 of the resolved config (as written to config.json), first 16 hex digits."""
    return hashlib.sha256(config_lib.to_json(self.config).encode()).hexdigest()[:16]


def create(workdir: str) -> None:
  """Makes a local workdir; checks that an object-store one can be written (object stores have no folders).

  A workdir that cannot be used is a ConfigError (a bad --workdir), said in one line by the entry points."""
  if storage.is_remote(workdir):
    try:
      storage.check_workdir(workdir)
    except storage.StorageError as e:
      raise config_lib.ConfigError(str(e)) from e
  else:
    os.makedirs(workdir, exist_ok=True)


def write_text(workdir: str, name: str, text: str) -> None:
  """Writes WORKDIR/name whole (one object upload on a store); `name` may hold '/' (its folder is made)."""
  path = storage.join(workdir, *name.split("/"))
  if storage.is_remote(path):
    storage.write_bytes(path, text.encode("utf-8"))
  else:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's resolved config; `workdir` may also be a model directory (hyperclip-export --model-only)."""
  from hyperclip_jax import model_dir  # late: model_dir builds Runs
  if model_dir.is_model_dir(workdir):
    return model_dir.read_config(workdir)
  path = storage.join(workdir, "config.json")
  try:
    found = storage.isfile(path)
  except storage.StorageError as e:
    raise RunError(str(e)) from e
  if not found:
    raise RunError(f"workdir {workdir!r} has no config.json; pass the --workdir of a hyperclip-train run")
  return ml_collections.ConfigDict(json.loads(storage.read_bytes(path).decode("utf-8")))


def load_run(workdir: str, step: int | None = None, config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores params and batch_stats of `step` (default: the newest) onto this process's devices.

  `config` overrides the workdir's config.json (it must describe the same model). `workdir` may also be a model
  directory (hyperclip-export --model-only): its one step is restored.
  """
  from hyperclip_jax import model_dir  # late: model_dir builds Runs
  if model_dir.is_model_dir(workdir):
    return model_dir.load_run(workdir, step, config)
  from hyperclip_jax import optim, sharding, train  # late: the trainer's state layout is the checkpoint's
  from hyperclip_jax.models import two_towers
  config = config if config is not None else read_config(workdir)
  ckpt_dir = storage.join(workdir, "checkpoints")
  if not storage.isdir(ckpt_dir):
    raise RunError(f"workdir {workdir!r} has no checkpoint; train one first: hyperclip-train --workdir {workdir}")
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    steps = checkpointer.manager.all_steps()
    if not steps:
      raise RunError(f"workdir {workdir!r} has no checkpoint; train one first: hyperclip-train --workdir {workdir}")
    step = max(steps) if step is None else step
    if step not in steps:
      raise RunError(f"workdir {workdir!r} has no checkpoint at step {step}; it has steps "
                     f"{', '.join(map(str, sorted(steps)))}")
    checkpointer.check_compatible(step, config_lib.model_signature(config))
    model = two_towers.build_model(config)
    mesh = sharding.make_mesh(config.mesh)
    rng = jax.random.PRNGKey(0)
    variables = jax.eval_shape(model.init, rng)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps, variables["params"])
    abstract = train.abstract_state(variables, tx, mesh)
    state, _ = checkpointer.restore(step, abstract)
  except ckpt_lib.CheckpointError as e:
    raise RunError(str(e)) from e
  finally:
    checkpointer.close()
  return Run(workdir, config, int(step), state["params"], state["batch_stats"])
