"""Multi-host start-up: `jax.distributed.initialize` from config.distributed and the environment.

  config.distributed.mode = 'auto'   initialize when the environment says this is one of several processes:
                                     a coordinator address (config or JAX_COORDINATOR_ADDRESS), a SLURM job
                                     step with SLURM_NTASKS > 1, or a multi-host Cloud TPU VM
                                     (TPU_WORKER_HOSTNAMES lists several hosts); otherwise one process
                          'on'     always initialize (jax auto-detects TPU pods, SLURM, Open MPI, k8s)
                          'off'    never: one process
  coordinator_address ('host:port'), num_processes and process_id are explicit settings for local
  multi-process runs (launch/local_multiprocess.sh); empty / 0 / -1 mean unset, and then the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are used.

It must run before anything touches a jax device. On CPU the cross-process collectives use gloo.
"""
from __future__ import annotations

import os
from typing import Any

import jax

from hyperclip_jax.config import ConfigError

MODES = ("auto", "on", "off")


def settings(dist_cfg: Any, environ: dict[str, str] | None = None) -> dict[str, Any] | None:
  """The explicit initialize() arguments, {} for pure auto-detection, or None for a single process."""
  env = os.environ if environ is None else environ
  mode = dist_cfg.mode
  if mode not in MODES:
    raise ConfigError(f"config.distributed.mode={mode!r} is unknown; known: {', '.join(MODES)}")
  if mode == "off":
    return None
  address = dist_cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  num = dist_cfg.num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = dist_cfg.process_id if dist_cfg.process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
  if address:
    if num < 1 or not 0 <= pid < num:
      raise ConfigError(
          f"config.distributed: coordinator_address={address!r} needs num_processes >= 1 and 0 <= process_id < "
          f"num_processes (got {num}, {pid}); set them or JAX_NUM_PROCESSES / JAX_PROCESS_ID")
    return {"coordinator_address": address, "num_processes": num, "process_id": pid}
  slurm = "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1
  tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "")
  if mode == "on" or slurm or tpu_pod:
    return {}
  return None


def initialize(dist_cfg: Any) -> bool:
  """Calls jax.distributed.initialize when this run is one of several processes; True if it did."""
  kwargs = settings(dist_cfg)
  if kwargs is None or jax.distributed.is_initialized():
    return False
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or kwargs.get("coordinator_address"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
  jax.distributed.initialize(**kwargs)
  return True


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (through the coordination service; no-op in one process).

  Gloo gives processes only 30 s to meet at their first collective; a barrier with a long timeout keeps
  uneven start-up or compile times (a loaded host) from failing the run. jax has no public barrier of this
  kind, so this uses the distributed client directly.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # no public equivalent in jax 0.10
  jax_distributed.global_state.client.wait_at_barrier(f"hyperclip_{name}", timeout_s * 1000)


def compile_then_meet(fn: Any, name: str) -> Any:
  """Wraps a jitted step: in several processes the first call compiles ahead of time, waits at a barrier,
  and every call then runs the compiled program; one process: `fn` itself."""
  if jax.process_count() == 1:
    return fn
  compiled = []

  def call(*args):
    if not compiled:
      compiled.append(fn.lower(*args).compile())
      barrier(name)
    return compiled[0](*args)

  return call
