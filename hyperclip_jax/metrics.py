"""Metric writers: JSON lines (WORKDIR/metrics.jsonl), TensorBoard event files, and a progress line.

WORKDIR may be an object-store URI (gs://...): see MetricWriter.

Only process 0 writes; the others get a writer that drops everything, so call sites need no checks.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Mapping

import numpy as np
from tensorboardX import SummaryWriter  # protobuf only, no TensorFlow

from hyperclip_jax import storage


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if hasattr(v, "shape") and getattr(v, "shape", None) == ():
    return float(v)
  return v


class MetricWriter:
  """Writes one JSON object per logged step to metrics.jsonl and scalars to TensorBoard.

  A local workdir gets both written in place (metrics.jsonl appended, as on every resume). An object store cannot
  append, so there both go to a local staging folder and are uploaded whole every `sync_every_s` seconds and at
  close: each upload rewrites metrics.jsonl (a few MB after 10^5 steps), TensorBoard event files only when they
  grew. A resumed run first downloads the existing metrics.jsonl, so rows keep accumulating. A crash loses at
  most the last `sync_every_s` seconds of rows (the resumed run logs those steps again).
  """

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True, sync_every_s: float = 60.0):
    self.enabled = enabled
    self._tb = None
    self._file = None
    self._remote = None  # the workdir URI when writing through a staging folder
    if not enabled:
      return
    local = workdir
    if storage.is_remote(workdir):
      self._remote, self._sync_every_s = workdir, sync_every_s
      self._uploaded, self._synced = {}, time.monotonic()
      local = tempfile.mkdtemp(prefix="hyperclip-metrics-")
      remote_rows = storage.join(workdir, "metrics.jsonl")
      if storage.exists(remote_rows):
        with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
          f.write(storage.read_bytes(remote_rows))
    else:
      os.makedirs(workdir, exist_ok=True)
    self._local = local
    self._file = open(os.path.join(local, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      # on a store, a unique suffix: event files are named by the second, and a rerun within it must not
      # replace the previous run's uploaded file
      suffix = f".{uuid.uuid4().hex[:8]}" if self._remote is not None else ""
      self._tb = SummaryWriter(os.path.join(local, "tensorboard"), filename_suffix=suffix)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if self._remote is not None and time.monotonic() - self._synced >= self._sync_every_s:
      self._upload()

  def _upload(self) -> bool:
    """Copies the staged files that changed to the workdir; a failure warns (the next sync retries)."""
    self._synced = time.monotonic()
    try:
      for root, _, names in os.walk(self._local):
        for name in names:
          path = os.path.join(root, name)
          size = os.path.getsize(path)
          if self._uploaded.get(path) != size:
            rel = os.path.relpath(path, self._local).replace(os.sep, "/")
            with open(path, "rb") as f:
              storage.write_bytes(storage.join(self._remote, rel), f.read())
            self._uploaded[path] = size
    except Exception as e:  # a metrics upload must not end a long run; the rows stay staged locally
      print(f"WARNING: uploading metrics to {self._remote} failed ({type(e).__name__}: {e}); "
            f"they stay in {self._local} and are retried", file=sys.stderr, flush=True)
      return False
    return True

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._remote is not None:
      if self._upload():
        shutil.rmtree(self._local, ignore_errors=True)
      self._remote = None


class Progress:
  """One-line progress display: step, loss, images/s and ETA (printed to stderr on process 0)."""

  def __init__(self, total_steps: int, batch_size: int, enabled: bool = True):
    self.total, self.batch, self.enabled = total_steps, batch_size, enabled
    self._t0, self._step0 = None, None

  def start(self, step: int) -> None:
    self._t0, self._step0 = time.perf_counter(), step

  def images_per_sec(self, step: int) -> float:
    dt = time.perf_counter() - self._t0
    return (step - self._step0) * self.batch / dt if dt > 0 and step > self._step0 else float("nan")

  def update(self, step: int, loss: float) -> None:
    if not self.enabled:
      return
    ips = self.images_per_sec(step)
    steps_per_s = ips / self.batch if ips == ips else 0.0
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
    eta_s = "?" if eta != eta else f"{int(eta) // 60}m{int(eta) % 60:02d}s"
    print(f"step {step:>6d}/{self.total}  loss {loss:8.4f}  {ips:7.1f} img/s  eta {eta_s}", file=sys.stderr,
          flush=True)
