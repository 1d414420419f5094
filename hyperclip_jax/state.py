"""The train state: {'step', 'params', 'opt_state', 'batch_stats'}, placed on the mesh by the partition rules.

The trainer creates it (`init_state`) or restores it onto `abstract_state`, the restore target that costs no
init; hyperclip-eval and hyperclip-export restore checkpoints onto the same layout (`restore_target`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hyperclip_jax import optim, sharding
from hyperclip_jax.models import two_towers

State = dict[str, Any]


def abstract_state(variables: Any, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                   param_rules: Any = ((".*", "replicated"),)) -> State:
  """The train state's ShapeDtypeStructs, with the shardings init_state gives it, from the shapes of the model's
  variables (jax.eval_shape(model.init, rng)): a restore target that costs no init (a resumed run never
  compiles or runs one)."""
  shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": variables["params"],
            "opt_state": jax.eval_shape(tx.init, variables["params"]), "batch_stats": variables["batch_stats"]}
  shardings = sharding.state_shardings(shapes, param_rules, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def init_state(model: two_towers.TwoTowers, tx: optax.GradientTransformation, rng: jax.Array,
               mesh: jax.sharding.Mesh, param_rules: Any = ((".*", "replicated"),), abstract: State | None = None
               ) -> State:
  """Creates the train state already placed on the mesh by the partition rules (never a bare jit(tx.init): it
  lands on one device); `abstract`: its abstract_state, where the caller has it."""
  if abstract is None:
    abstract = abstract_state(jax.eval_shape(model.init, rng), tx, mesh, param_rules)

  def make(rng):
    variables = model.init(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
            "opt_state": tx.init(variables["params"]), "batch_stats": variables["batch_stats"]}
  return jax.jit(make, out_shardings=jax.tree.map(lambda x: x.sharding, abstract))(rng)


def restore_target(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> State:
  """The abstract train state of `config`'s model and optimizer, parameters replicated: what a checkpoint is
  restored onto for evaluation and export (shapes only: no init runs)."""
  model = two_towers.build_model(config)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, variables["params"])
  return abstract_state(variables, tx, mesh)
