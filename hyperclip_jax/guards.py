"""What keeps a run safe from its surroundings: one trainer per workdir, SIGTERM / preemption, non-finite steps.

  WorkdirLock      an fcntl.flock on WORKDIR/.lock: the kernel drops it when its process dies (even kill -9),
                   so it is never stale; a second trainer on the same workdir stops at once. On an object
                   store (gs://...) the lock is an object created with a precondition (it must not exist), holding
                   its owner's id; released on exit, left behind by a killed trainer (docs/storage.md)
  PreemptionWatch  SIGTERM (one process) or JAX's preemption sync point (multi-host) asks the loop to save a
                   checkpoint at the next step boundary and exit with EXIT_PREEMPTED
  nonfinite_report the one-line diagnostic of a step whose loss, gradients or update went NaN/Inf
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from hyperclip_jax import storage

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: not finished, rerun the same command to continue


class GuardError(RuntimeError):
  """A run stopped by one of its guards; the message says what happened and what to do."""


class WorkdirBusy(GuardError):
  """Another live trainer holds the workdir."""


class NonFiniteError(GuardError):
  """A step produced a NaN/Inf loss, gradient or parameter (and skip_nonfinite_steps is off)."""


class Preempted(Exception):
  """The run saved a checkpoint after SIGTERM / a preemption notice and stopped; rerun to continue."""


class WorkdirLock:
  """Exclusive lock on WORKDIR/.lock for the life of one trainer (process 0 only on multi-host runs).

  Local: fcntl.flock, dropped by the kernel when the process dies. Object store: WORKDIR/.lock is created only if
  absent (GCS ifGenerationMatch=0, so two trainers racing cannot both win) and deleted on release if it still
  holds this trainer's id. A trainer killed without cleanup (kill -9, a lost VM) leaves it: delete it by hand
  once that trainer is surely gone.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = storage.join(workdir, ".lock")
    self._fd = None
    self._owner = None  # the id written into the lock object (object stores)
    if not enabled:
      return
    if storage.is_remote(workdir):
      self._acquire_object(workdir)
      return
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
      os.close(fd)
      raise WorkdirBusy(f"workdir {workdir} is in use by another trainer ({holder}); stop it first or use another "
                        "--workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    self._fd = fd

  def _acquire_object(self, workdir: str) -> None:
    owner = (f"pid {os.getpid()} on {socket.gethostname()} since "
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, lock id {uuid.uuid4().hex[:12]}")
    if not storage.create_exclusive(self.path, owner.encode()):
      try:
        holder = storage.read_bytes(self.path).decode(errors="replace").strip()[:200] or "unknown trainer"
      except OSError:  # e.g. released between the two calls (FileNotFoundError)
        holder = "a trainer that just stopped"
      raise WorkdirBusy(f"workdir {workdir} is in use by another trainer ({holder}); stop it first or use another "
                        f"--workdir; if that trainer is dead (killed, VM lost), delete {self.path} and rerun")
    self._owner = owner

  def release(self) -> None:
    if self._owner is not None:
      owner, self._owner = self._owner, None
      try:  # someone may have deleted a lock they judged stale and taken it: leave theirs alone
        if storage.read_bytes(self.path).decode(errors="replace") == owner:
          storage.remove(self.path)
      except FileNotFoundError:
        pass
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


class PreemptionWatch:
  """Turns SIGTERM into a request to checkpoint and stop at the next step boundary.

  One process: a SIGTERM handler (the previous one comes back on close). Multi-host: JAX's preemption sync
  point, which the coordination service raises on every process at the same step; a Python handler there
  would steal SIGTERM from it.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum: int, frame: Any) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name
    print(f"{self.signal_name} received: saving a checkpoint after the current step, then exiting",
          file=sys.stderr, flush=True)

  def requested(self, step: int) -> bool:
    """True once a stop is due at `step`; every process must call it at every step (multi-host)."""
    if self.signal_name is not None:
      return True
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal_name = "preemption notice"
          return True
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        return False
    return False

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def leaf_finite(tree: Any) -> jax.Array:
  """bool [n_leaves]: whether every element of each leaf is finite (inside jit; tree-leaf order)."""
  leaves = jax.tree.leaves(tree)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]) if leaves else jnp.ones((0,), bool)


def nonfinite_report(step: int, loss: float, grads_finite: np.ndarray, params_finite: np.ndarray,
                     param_paths: list[str], batch: dict[str, np.ndarray] | None) -> str:
  """One line: the step, its loss, which gradient/parameter leaves went non-finite (first few in tree order, and
  their top-level subtrees), and the batch's data indices, naming examples whose inputs are not finite."""
  parts = [f"step {step}: non-finite training step (loss {loss})"]
  for name, finite in (("gradient", grads_finite), ("updated parameter", params_finite)):
    bad = [p for p, ok in zip(param_paths, np.asarray(finite)) if not ok]
    if len(bad) == len(param_paths):
      parts.append(f"all {len(bad)} {name} leaves non-finite")
    elif bad:
      top = sorted({p.split("']")[0] + "']" for p in bad})
      parts.append(f"{len(bad)} of {len(param_paths)} {name} leaves non-finite, first {', '.join(bad[:3])} "
                   f"(subtrees {', '.join(top)})")
  if np.all(grads_finite) and np.all(params_finite):
    parts.append("all gradients and updates finite: the loss itself overflowed")
  batch = batch or {}
  if "index" in batch and np.size(batch["index"]):
    idx = np.asarray(batch["index"]).ravel()
    parts.append(f"batch data indices {int(idx.min())}..{int(idx.max())} ({idx.size} examples on this host)")
    for key in ("image", "text"):
      x = np.asarray(batch.get(key, np.zeros(0)))
      if x.size and np.issubdtype(x.dtype, np.floating):
        rows = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
        if rows.size:
          parts.append(f"non-finite {key} in examples {', '.join(str(int(idx[r])) for r in rows[:5])}")
  return "; ".join(parts)


class StepHealth:
  """The one place a step's finiteness is looked at. A step's health is read one step late (once the next
  step is dispatched, so the host never waits on the step it just queued), and before anything is saved.

  skip_mode (config.skip_nonfinite_steps): a non-finite step is counted and reported; otherwise it raises
  NonFiniteError naming the last good checkpoint."""

  def __init__(self, skip_mode: bool, param_paths: list[str], skipped: int = 0):
    self.skip_mode, self.param_paths, self.skipped = skip_mode, param_paths, skipped
    self.last_saved_step: int | None = None
    self._pending = None  # (step, health, loss, host batch) of the newest step, not yet looked at

  def push(self, step: int, health: Any, loss: Any, host_batch: dict[str, np.ndarray]) -> None:
    """Checks the previous step, then holds this one."""
    self.flush()
    self._pending = (step, health, loss, host_batch)

  def flush(self) -> None:
    """Checks the held step (waits for it)."""
    if self._pending is None:
      return
    step, health, loss, host_batch = self._pending
    self._pending = None
    health = jax.device_get(health)
    if health["finite"]:
      return
    report = nonfinite_report(step, float(jax.device_get(loss)), health["grads"], health["params"],
                              self.param_paths, host_batch)
    if self.skip_mode:
      self.skipped += 1
      print(f"WARNING: {report}; update skipped ({self.skipped} so far, config.skip_nonfinite_steps)",
            file=sys.stderr, flush=True)
      return
    kept = (f"the last good checkpoint (step {self.last_saved_step}) is kept" if self.last_saved_step is not None
            else "no checkpoint yet")
    raise NonFiniteError(f"{report}; training stopped, {kept}; lower config.optim.lr, check the data, or pass "
                         "--config.skip_nonfinite_steps=true to skip such steps")
