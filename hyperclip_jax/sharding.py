"""Device mesh, partition rules and batch placement: one ('data', 'fsdp') mesh for every run, a laptop or a pod.

Parameters are placed by regex partition rules (`config.mesh.param_rules`, the project's one rule semantics:
fullmatch on the '/'-joined path, first match wins, every param must be covered):
  'replicated'  a full copy on every device
  'fsdp'        split over the 'fsdp' mesh axis along the leaf's largest dimension divisible by its size
                (replicated when none is, or when the axis has size 1)
Optimizer-state leaves that mirror a parameter (AdamW's mu/nu, Adafactor's factors) follow its rule; the rest
(step counts) are replicated. Batches are split over both mesh axes.
"""
from __future__ import annotations

import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperclip_jax import rules as rules_lib
from hyperclip_jax.config import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # a batch dimension is sharded over both axes
PARAM_RULE_VALUES = ("replicated", "fsdp")


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list[Any] | None = None) -> Mesh:
  """Mesh of shape (data, fsdp) from config; one size may be -1 (= all remaining devices)."""
  devices = devices if devices is not None else jax.devices()
  n = len(devices)
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
  if sizes.count(-1) > 1:
    raise ConfigError("config.mesh: at most one of data, fsdp may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or n % known:
    raise ConfigError(f"config.mesh=(data={sizes[0]}, fsdp={sizes[1]}) does not fit {n} devices")
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise ConfigError(f"config.mesh=(data={sizes[0]}, fsdp={sizes[1]}) uses {np.prod(sizes)} of {n} devices")
  # jax >= 0.10 defaults make_mesh to explicit axes; the train step relies on sharding propagation (Auto).
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over all devices."""
  return NamedSharding(mesh, P(BATCH_AXES))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's slice of a global batch into global arrays sharded along the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# Partition rules.


def _spec_for(shape: tuple[int, ...], rule: str, mesh: Mesh) -> P:
  """PartitionSpec of one leaf under `rule`."""
  n = mesh.shape["fsdp"]
  if rule == "replicated" or n == 1:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))  # largest first; ties: the earlier dim
  for d in dims:
    if shape[d] % n == 0:
      return P(*([None] * d + ["fsdp"]))
  return P()


def param_specs(params: Any, rules: Any, mesh: Mesh, what: str = "config.mesh.param_rules") -> Any:
  """Tree of PartitionSpecs for `params` (concrete or abstract) by the regex partition rules."""
  try:
    rule_tree = rules_lib.match_rules(rules_lib.param_paths(params), list(rules), what)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for rule in jax.tree.leaves(rule_tree):
    if rule not in PARAM_RULE_VALUES:
      raise ConfigError(f"{what}: value {rule!r} is unknown; known: {', '.join(PARAM_RULE_VALUES)}")
  return jax.tree.map(lambda leaf, rule: _spec_for(tuple(leaf.shape), rule, mesh), params, rule_tree)


def _opt_specs(opt_state: Any, params: Any, specs: Any, rules: Any, mesh: Mesh) -> Any:
  """Specs for optimizer state: a leaf whose path ends with a param's path follows that param's rule."""
  keyed = {}  # param keystr -> (shape, spec, rule)
  rule_tree = rules_lib.match_rules(rules_lib.param_paths(params), list(rules), "config.mesh.param_rules")
  for (path, leaf), spec, rule in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, P)), jax.tree.leaves(rule_tree)):
    keyed[jax.tree_util.keystr(path)] = (tuple(leaf.shape), spec, rule)

  def one(path, leaf):
    key = jax.tree_util.keystr(path)
    for pkey, (shape, spec, rule) in keyed.items():
      if key.endswith(pkey):
        return spec if tuple(leaf.shape) == shape else _spec_for(tuple(leaf.shape), rule, mesh)
    return P()

  return jax.tree_util.tree_map_with_path(one, opt_state)


def state_shardings(abstract_state: dict[str, Any], rules: Any, mesh: Mesh) -> dict[str, Any]:
  """NamedShardings for a train state {'step', 'params', 'opt_state', 'batch_stats'} (abstract leaves)."""
  specs = param_specs(abstract_state["params"], rules, mesh)
  out = {k: jax.tree.map(lambda _: P(), v) for k, v in abstract_state.items()}
  out["params"] = specs
  if "opt_state" in abstract_state:
    out["opt_state"] = _opt_specs(abstract_state["opt_state"], abstract_state["params"], specs, rules, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), out, is_leaf=lambda x: isinstance(x, P))


def format_param_table(params: Any) -> str:
  """One line per parameter: path, shape, partition spec and bytes per device, plus a total."""
  rows, total, per_device = [], 0, 0
  for path, leaf in zip(jax.tree.leaves(rules_lib.param_paths(params)), jax.tree.leaves(params)):
    spec = leaf.sharding.spec if isinstance(leaf.sharding, NamedSharding) else P()
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    shard = leaf.sharding.shard_shape(leaf.shape)
    local = int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
    total, per_device = total + nbytes, per_device + local
    rows.append((path, str(tuple(leaf.shape)), str(tuple(spec)), f"{local:,}"))
  widths = [max(len(r[i]) for r in rows + [("param", "shape", "spec", "bytes/device")]) for i in range(4)]
  fmt = "  ".join(f"{{:<{w}}}" for w in widths)
  lines = [fmt.format("param", "shape", "spec", "bytes/device")]
  lines += [fmt.format(*r) for r in rows]
  lines.append(f"{len(rows)} params, {total:,} bytes in all, {per_device:,} bytes per device")
  return "\n".join(lines)


def print_param_table(params: Any, file: Any = sys.stderr) -> None:
  if jax.process_index() == 0:
    print(format_param_table(params), file=file, flush=True)
