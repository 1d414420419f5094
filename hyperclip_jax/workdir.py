"""A training run's workdir read back: its resolved config and the params of one checkpoint step.

Used by the tools that come after training (hyperclip-eval, hyperclip-export); the trainer itself resumes
through checkpoint.Checkpointer.
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


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise RunError(f"workdir {workdir!r} has no config.json; pass the --workdir of a hyperclip-train run")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, step: int | None = None, config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores params and batch_stats of `step` (default: the newest) onto this process's devices.

  `config` overrides the workdir's config.json (it must describe the same model).
  """
  from hyperclip_jax import optim, sharding, train  # late: the trainer's state layout is the checkpoint's
  from hyperclip_jax.models import two_towers
  config = config if config is not None else read_config(workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
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
