"""Orbax checkpoints of a run: train state, data-iterator state and the model signature, resumed by rerun.

A checkpoint step directory holds three items:
  state  params, optimizer state, batch_stats, step (sharded arrays, restored onto the current mesh)
  data   the grain iterator state (JSON), so a resumed run reads exactly the next batch
  meta   the config entries that decide parameter shapes; a mismatch stops before anything is written
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used for this run; the message says what to do."""


class Checkpointer:
  """Async Orbax CheckpointManager under WORKDIR/checkpoints, keeping the last `keep` steps."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
        force=True)

  def check_compatible(self, step: int, meta: dict[str, Any]) -> None:
    """Raises CheckpointError when the checkpoint at `step` was written by a run with other model shapes."""
    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # a foreign or damaged layout: say so rather than guess
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} has no readable model signature ({type(e).__name__}); "
          "use a new --workdir (nothing was overwritten)") from e
    if _canonical(saved) != _canonical(meta):
      diff = _first_difference(saved, meta)
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} was written with a different model config ({diff}); "
          "use a new --workdir or the config that wrote it (nothing was overwritten)")

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) at `step`, placing arrays with the shardings of `abstract_state`."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except ValueError as e:  # e.g. another optimizer (name, clipping, frozen rules) changes the state tree
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} does not match this run's train state (changed "
          f"config.optim?): {str(e).splitlines()[0][:200]}; use a new --workdir or the config that wrote it") from e
    return out["state"], out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with shardings: the restore target for a state shaped like `tree`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _canonical(d: Any) -> str:
  return json.dumps(d, sort_keys=True, default=str)


def _first_difference(saved: Any, current: Any, prefix: str = "config") -> str:
  if isinstance(saved, dict) and isinstance(current, dict):
    for k in sorted(set(saved) | set(current)):
      if k not in saved or k not in current or _canonical(saved[k]) != _canonical(current[k]):
        return _first_difference(saved.get(k), current.get(k), f"{prefix}.{k}")
  return f"{prefix}: checkpoint has {saved!r}, this run has {current!r}"


def tree_checksum(tree: Any) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes: equal iff two runs ended bit-identical."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    h.update(arr.tobytes())
  return h.hexdigest()[:16]
