"""Multi-host runs take JAX's preemption sync point (every process stops at the same step) instead of a SIGTERM
handler; a run without the preemption service simply never stops early."""
import signal

import jax
from jax.experimental import multihost_utils

from hyperclip_jax import guards


def test_multihost_stop_comes_from_the_preemption_sync_point(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 5)
  before = signal.getsignal(signal.SIGTERM)
  with guards.PreemptionWatch() as watch:
    assert signal.getsignal(signal.SIGTERM) is before  # JAX's notifier keeps SIGTERM
    assert [watch.requested(s) for s in (3, 4, 5)] == [False, False, True]
    assert watch.signal_name == "preemption notice"


def test_preemption_service_off_means_no_stop(monkeypatch):
  def off(step):
    raise RuntimeError("preemption sync manager is not initialized")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", off)
  with guards.PreemptionWatch() as watch:
    assert not watch.requested(1)


def test_single_process_sigterm_handler_is_installed_and_restored():
  before = signal.getsignal(signal.SIGTERM)
  with guards.PreemptionWatch() as watch:
    assert signal.getsignal(signal.SIGTERM) == watch._on_signal
    signal.raise_signal(signal.SIGTERM)
    assert watch.requested(7) and watch.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before
