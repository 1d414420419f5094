"""Per-step performance figures for metrics.jsonl / TensorBoard, and the profiler window.

  perf/step_time                  seconds per train step over the last log window (wall clock, host side)
  perf/data_wait                  seconds per step the loop waited for the next host batch (same window)
  perf/images_per_sec_per_device  global batch / step_time / device count
  perf/mfu                        model FLOPs per step (XLA's cost analysis of the step before partitioning)
                                  / step_time / (devices x the device kind's peak dense bf16 FLOP/s);
                                  null where the peak is unknown (CPUs), the reason printed once at start

The window closes at each log step, where the loop already waits for the step's metrics, so these figures
add no host synchronisation. MFU counts what the program computes (forward, backward, optimizer) against
the bf16 peak, whatever config.model.dtype is: a float32 run on a GPU reads low by design.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

import jax

# Peak dense bf16 FLOP/s per jax device, from the vendors' data sheets. Matched as lower-case substrings of
# `device.device_kind` (first match wins; more specific names first).
PEAK_BF16_FLOPS = (
    ("tpu v6 lite", 918e12),  # Trillium / v6e
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports 'TPU v5'
    ("tpu v4", 275e12),
    ("h200", 989e12),  # SXM, dense (no sparsity)
    ("h100", 989e12),  # SXM; the PCIe card is lower (756e12)
    ("a100", 312e12),
)


def peak_flops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def step_flops(jitted: Any, *args: Any) -> float | None:
  """FLOPs of one call of `jitted` on `args` (the whole program, all devices), from XLA's cost analysis of the
  lowered step; None where the backend gives none. Lowering reuses jit's trace: it costs no compile."""
  try:
    analysis = jitted.lower(*args).cost_analysis()
  except Exception:  # cost analysis is best effort: a backend may not implement it  # noqa: BLE001
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class StepTimer:
  """Wall time and data-wait time per step over a window of steps (reset after compiles and evaluations)."""

  def __init__(self, batch_size: int, num_devices: int, flops_per_step: float | None, device_kind: str):
    self.batch_size, self.num_devices = batch_size, num_devices
    peak = peak_flops(device_kind)
    self.peak_total = peak * num_devices if peak else None
    self.flops_per_step = flops_per_step
    self.mfu_reason = None
    if self.peak_total is None:
      self.mfu_reason = f"no peak FLOP/s known for device kind {device_kind!r} (hyperclip_jax/perf.py)"
    elif flops_per_step is None:
      self.mfu_reason = "XLA gave no FLOP count for the train step"
    self.reset(0)

  def reset(self, step: int) -> None:
    self._t0, self._step0, self._wait = time.perf_counter(), step, 0.0

  @contextlib.contextmanager
  def waiting_for_data(self) -> Iterator[None]:
    t = time.perf_counter()
    try:
      yield
    finally:
      self._wait += time.perf_counter() - t

  def window(self, step: int) -> dict[str, float | None]:
    """The perf/* figures since the last reset, then starts a new window at `step`."""
    n = step - self._step0
    if n <= 0:
      return {}
    step_time = (time.perf_counter() - self._t0) / n
    out = {"perf/step_time": step_time, "perf/data_wait": self._wait / n,
           "perf/images_per_sec_per_device": self.batch_size / step_time / self.num_devices,
           "perf/mfu": None}
    if self.mfu_reason is None:
      out["perf/mfu"] = self.flops_per_step / step_time / self.peak_total
    self.reset(step)
    return out


class ProfileWindow:
  """Traces steps [first_step, first_step + num_steps) with jax.profiler into WORKDIR/profile (TensorBoard's
  profile plugin or Perfetto read it); num_steps = 0: off. Process 0 only writes unless all_processes."""

  def __init__(self, workdir: str, first_step: int, num_steps: int, enabled: bool = True):
    self.dir = os.path.join(workdir, "profile")
    self.first, self.last = first_step, first_step + num_steps
    self.enabled = enabled and num_steps > 0
    self.active = False

  def at_step(self, step: int, outputs: Any = None) -> None:
    """Call before dispatching step `step + 1` (`step` steps done; `outputs`: the last step's, awaited before
    the trace stops so that it holds that step's device work)."""
    if not self.enabled:
      return
    if not self.active and self.first <= step < self.last:
      jax.profiler.start_trace(self.dir)
      self.active = True
      print(f"profiling steps {step + 1}..{self.last} into {self.dir}", file=sys.stderr, flush=True)
    elif self.active and step >= self.last:
      self.stop(outputs)

  def stop(self, outputs: Any = None) -> None:
    if self.active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
