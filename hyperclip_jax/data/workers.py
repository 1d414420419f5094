"""How many grain worker processes a host runs: a number, or 'auto' = the cores this process may use.

'auto' counts the cores in the process's CPU affinity mask (os.sched_getaffinity: what taskset, cgroups
cpusets and SLURM's --cpus-per-task leave it, not the machine's total) and keeps RESERVED_CORES for the main
process (the training loop, which dispatches steps and copies batches to the devices, and its prefetch
thread). Fewer than RESERVED_CORES + 1 cores gives 0 workers: decoding then runs in the main process.
"""
import os

RESERVED_CORES = 2


def available_cores() -> int:
  """Cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # platforms without affinity masks (macOS)
    return os.cpu_count() or 1


def resolve_worker_count(value: int | str, cores: int | None = None) -> int:
  """config.data.worker_count -> a worker count >= 0; 'auto' -> available cores - RESERVED_CORES."""
  if isinstance(value, str) and value.strip().isdigit():  # a command-line override of the 'auto' string
    value = int(value)
  if isinstance(value, str):
    if value.strip().lower() != "auto":
      raise ValueError(f"config.data.worker_count={value!r} must be an integer >= 0 or 'auto'")
    return max((available_cores() if cores is None else cores) - RESERVED_CORES, 0)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"config.data.worker_count={value!r} must be an integer >= 0 (0 decodes in this process) "
                     "or 'auto'")
  return value
