"""Device mesh and batch placement: one ('data', 'fsdp') mesh for every run, a laptop or a pod.

Parameters and optimizer state are replicated for now (the towers here are small); batches are split over
both mesh axes. Regex partition rules for FSDP come with the scale-out work.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hyperclip_jax.config import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # a batch dimension is sharded over both axes


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
