"""Metric writers: JSON lines (WORKDIR/metrics.jsonl), TensorBoard event files, and a progress line.

Only process 0 writes; the others get a writer that drops everything, so call sites need no checks.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import numpy as np


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if hasattr(v, "shape") and getattr(v, "shape", None) == ():
    return float(v)
  return v


class MetricWriter:
  """Writes one JSON object per logged step to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    self._file = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # light: protobuf only, no TensorFlow
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


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
