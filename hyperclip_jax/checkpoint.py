"""Orbax checkpoints of a run: train state, data-iterator state and the model signature, resumed by rerun.

A checkpoint step directory holds three items:
  state  params, optimizer state, batch_stats, step (sharded arrays, restored onto the current mesh)
  data   the grain iterator state (JSON), so a resumed run reads exactly the next batch
  meta   the config entries that decide parameter shapes (a mismatch stops before anything is written), plus
         under "_run" a fingerprint of the state and run counters

Failure behaviour (docs/reliability.md): Orbax writes each step into a temporary directory and renames it
when complete, so a killed save never shows up as a step; the trainer (`owner=True`) deletes such leftovers.
`restore_latest` checks every step it reads against its fingerprint and falls back to the newest step that
restores cleanly, moving damaged ones to WORKDIR/checkpoints_damaged. Formats read: JSON, zarr/OCDBT arrays
through tensorstore; nothing is unpickled. WORKDIR may be a gs:// (any etils.epath) URI: Orbax and tensorstore
write there directly; on GCS a step counts as finished once its commit_success.txt exists (no rename).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hyperclip_jax import storage

ITEMS = ("state", "data", "meta")
RUN_KEY = "_run"  # meta entry beside the model signature: {"fingerprint": str, "skipped_nonfinite": int, ...}
# Orbax's replica-parallel save slices each replicated array with an eager jitted op per shape: on CPU that is
# ~25 s of compiles at a run's first save. Arrays under this many bytes are written whole by one replica.
_MIN_REPLICA_SLICE_BYTES = 4 << 20


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used or written for this run; the message says what to do."""


class _Damaged(Exception):
  """A finished step directory whose files do not read back (truncated, garbled, missing)."""


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:limit] if text else ''}"


def _write_cause(e: BaseException) -> str:
  """The OS error behind a failed write (tensorstore puts it deep in a long message), then its first line."""
  text, cause = str(e), e.__cause__ or e.__context__
  while cause is not None:
    text, cause = text + str(cause), cause.__cause__ or cause.__context__
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
    if os.strerror(code) in text:
      return f"{os.strerror(code)}; {_first_line(e, 120)}"
  return _first_line(e)


class Checkpointer:
  """Async Orbax CheckpointManager under WORKDIR/checkpoints, keeping the last `keep` steps.

  owner: this process trains into the workdir (and holds its lock), so it may delete unfinished step
  directories that a killed run left behind; readers (eval, export) never do, as a live trainer may be writing.
  """

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, owner: bool = False):
    _register_array_handler()
    _quiet_late_write_callbacks()
    storage.check_workdir(workdir)
    self.workdir = storage.resolve(workdir)  # a local path, or a URI Orbax writes through etils.epath
    self.directory = storage.join(self.workdir, "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=owner)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())
    self._in_flight = None  # the step of the newest save() call: an async failure belongs to it
    self._closed = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any],
           run_info: dict[str, Any] | None = None) -> None:
    """Starts writing `step` (returns once the arrays are copied off the devices; the files land later)."""
    run = {"fingerprint": fingerprint(state), **(run_info or {})}
    self.wait()  # the previous save's failure is reported as its own
    self._in_flight = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave({**meta, RUN_KEY: run})), force=True)
    except Exception as e:
      raise self._write_error(e) from e

  def _write_error(self, e: Exception) -> CheckpointError:
    step = self._in_flight
    self.manager.reload()
    done = [s for s in self.manager.all_steps() if s != step]
    kept = f"step {max(done)} is intact" if done else "no complete checkpoint was written yet"
    return CheckpointError(
        f"writing checkpoint step {step} to {self.directory} failed ({_write_cause(e)}); {kept}; free disk "
        "space (or fix the cause) and rerun the same command to resume")

  def check_compatible(self, step: int, meta: dict[str, Any]) -> None:
    """Raises CheckpointError when the checkpoint at `step` was written by a run with other model shapes."""
    try:
      saved = self._read_meta(step)
    except _Damaged as e:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} has no readable model signature ({e}); "
                            "use a new --workdir (nothing was overwritten)") from e
    self._check_signature(step, saved, meta)

  def _read_meta(self, step: int) -> dict[str, Any]:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # missing or garbled JSON
      raise _Damaged(f"meta unreadable: {_first_line(e)}") from e

  def _check_signature(self, step: int, saved: dict[str, Any], meta: dict[str, Any]) -> None:
    saved = {k: v for k, v in saved.items() if k != RUN_KEY}
    if _canonical(saved) != _canonical(meta):
      diff = _first_difference(saved, meta)
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} was written with a different model config ({diff}); "
          "use a new --workdir or the config that wrote it (nothing was overwritten)")

  def _check_structure(self, step: int, abstract_state: Any) -> None:
    """A state tree of other leaf shapes is a config change (e.g. config.optim), not damage: no fallback."""
    try:
      saved = self.manager.item_metadata(step)["state"]
      saved_leaves = jax.tree.leaves(saved)
    except Exception as e:
      raise _Damaged(f"state metadata unreadable: {_first_line(e)}") from e
    shapes = lambda leaves: sorted((tuple(x.shape), np.dtype(x.dtype).name) for x in leaves)
    if saved is None or shapes(saved_leaves) != shapes(jax.tree.leaves(abstract_state)):
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} does not match this run's train state (changed "
          "config.optim?); use a new --workdir or the config that wrote it")

  def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    saved_meta = self._read_meta(step)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:
      raise _Damaged(f"restore failed: {_first_line(e)}") from e
    run = saved_meta.get(RUN_KEY, {})
    if "fingerprint" in run and fingerprint(out["state"]) != run["fingerprint"]:
      raise _Damaged("array contents differ from the fingerprint saved with them (garbled files)")
    return out["state"], out["data"], run

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) at `step` onto the shardings of `abstract_state`, verified."""
    self._check_structure(step, abstract_state)
    try:
      state, data, _ = self._restore_verified(step, abstract_state)
    except _Damaged as e:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is damaged ({e}); use another step "
                            "or rerun the training to rewrite it") from e
    return state, data

  def restore_latest(self, abstract_state: Any, meta: dict[str, Any], fresh: bool = False
                     ) -> tuple[int, Any, dict[str, Any], dict[str, Any]] | None:
    """(step, state, data_state, run_info) of the newest usable checkpoint, or None for a new run.

    A damaged newest step is moved to WORKDIR/checkpoints_damaged with a warning naming it and the step
    resumed instead; if no step is usable this raises, unless `fresh` (then every step is moved to
    WORKDIR/checkpoints_previous and the run starts at step 0). A config mismatch always raises.
    """
    self.manager.reload()
    steps = sorted(self.manager.all_steps(), reverse=True)
    if fresh:
      if steps:
        where = self._set_aside(steps, "checkpoints_previous")
        _warn(f"config.resume=fresh: starting from step 0; the existing checkpoints (steps "
              f"{', '.join(map(str, steps))}) were moved to {where}")
      return None
    damaged = []
    for step in steps:
      try:
        self._check_signature(step, self._read_meta(step), meta)
        self._check_structure(step, abstract_state)
        state, data, run = self._restore_verified(step, abstract_state)
      except _Damaged as e:
        damaged.append((step, str(e)))
        continue
      if damaged:
        where = self._set_aside([s for s, _ in damaged], "checkpoints_damaged")
        bad = ", ".join(f"step {s} ({why})" for s, why in damaged)
        _warn(f"WARNING: checkpoint {bad} is damaged; resuming from step {step} instead, the newest usable one "
              f"(damaged steps moved to {where})")
      return step, state, data, run
    if damaged:
      bad = "; ".join(f"step {s}: {why}" for s, why in damaged)
      raise CheckpointError(
          f"no usable checkpoint in {self.directory} ({bad}); move them away or pass --config.resume=fresh to "
          "start again from step 0 (they are kept in checkpoints_previous)")
    return None

  def _set_aside(self, steps: list[int], folder: str) -> str:
    """Moves step directories out of Orbax's sight (never deletes them); returns where they went."""
    target = storage.join(self.workdir, folder)
    if jax.process_index() == 0:
      if not storage.is_remote(target):  # object stores have no directories to make
        os.makedirs(target, exist_ok=True)
      for s in steps:
        dest = storage.join(target, str(s))
        if storage.exists(dest):
          dest += f".{time.strftime('%Y%m%d-%H%M%S')}"
        storage.move(storage.join(self.directory, str(s)), dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint set aside {folder}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._write_error(e) from e

  def close(self) -> None:
    """Waits for the in-flight save (raising CheckpointError if it failed) and releases the manager; idempotent."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self.manager.close()


_registered = []


def _register_array_handler() -> None:
  if not _registered:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES),
        override=True)
    _registered.append(True)


def _is_late_write_callback(unraisable: Any) -> bool:
  """A tensorstore write that finished after Orbax closed its save's asyncio loop (it does so as soon as one
  write of the save fails, e.g. on a full disk): the callback hits the closed loop and tensorstore reports that
  as unraisable, once per outstanding write (hundreds of tracebacks around the one-line error)."""
  e, tb = unraisable.exc_value, unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (type(e) is RuntimeError and str(e) == "Event loop is closed" and tb is not None
          and tb.tb_frame.f_code.co_name == "_check_closed"
          and os.path.basename(tb.tb_frame.f_code.co_filename) == "base_events.py")


def _quiet_late_write_callbacks() -> None:
  """Drops those reports (the failed save itself is raised as CheckpointError); all others go to the previous
  sys.unraisablehook. Installed once per process."""
  previous = sys.unraisablehook
  if getattr(previous, "_hyperclip_quiet", False):
    return

  def hook(unraisable):
    if not _is_late_write_callback(unraisable):
      previous(unraisable)

  hook._hyperclip_quiet = True
  sys.unraisablehook = hook


def _handlers() -> dict[str, Any]:
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler()}


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


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


def _words(x: jax.Array) -> jax.Array:
  """Every element's bits as uint32 words (1-D)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  size = x.dtype.itemsize
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 8-byte types give two words each


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> jax.Array:
  """uint32 [n]: sum of words times odd position weights, so any one changed word changes its leaf's sum."""
  sums = []
  for x in leaves:
    w = _words(jnp.asarray(x))
    i = jnp.arange(w.size, dtype=jnp.uint32)
    sums.append(jnp.sum(w * ((i * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(2654435761)), dtype=jnp.uint32))
  return jnp.stack(sums) if sums else jnp.zeros((0,), jnp.uint32)


def fingerprint(tree: Any) -> str:
  """A cheap on-device checksum of every leaf's bits (paths, dtypes, shapes included): catches garbled arrays."""
  flat = jax.tree_util.tree_leaves_with_path(tree)
  sums = _leaf_sums([leaf for _, leaf in flat])
  if not getattr(sums, "is_fully_addressable", True):  # several processes: every one holds the replicated sums
    sums = sums.addressable_data(0) if sums.is_fully_replicated else multihost_utils.process_allgather(
        sums, tiled=True)
  sums = np.asarray(jax.device_get(sums)).ravel()
  h = hashlib.sha256()
  for (path, leaf), s in zip(flat, sums):
    h.update(f"{jax.tree_util.keystr(path)}|{np.dtype(leaf.dtype).name}|{tuple(leaf.shape)}|{int(s)}\n".encode())
  return h.hexdigest()[:16]


def tree_checksum(tree: Any) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes: equal iff two runs ended bit-identical."""
  h = hashlib.sha256()
  tree = jax.tree.map(  # several processes: gather leaves sharded across them (FSDP) into whole arrays
      lambda x: multihost_utils.process_allgather(x, tiled=True)
      if not getattr(x, "is_fully_addressable", True) and not x.is_fully_replicated else x, tree)
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    h.update(arr.tobytes())
  return h.hexdigest()[:16]
