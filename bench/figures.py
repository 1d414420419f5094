"""What every benchmark shares: one JSON line per figure, and timing sides in turn on a drifting machine.

A figure line holds `name`, `value`, `unit`, `backend`, `device` and `command` (the command line that reproduces
it), plus whatever settings the benchmark adds (encoder, batch, ...). The scripts in bench/ are run as
`python bench/NAME.py`, so this directory is on sys.path and they `import figures` directly.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from typing import Any, Callable


def command() -> str:
  """The command line of this bench/ script as a user types it from the repository root: `python bench/NAME.py
  ARGS`, wherever it was started from."""
  return shlex.join(["python", "bench/" + os.path.basename(sys.argv[0])] + sys.argv[1:])


def emit(name: str, value: Any, unit: str, **fields: Any) -> dict[str, Any]:
  """Prints one figure as a JSON line (flushed: a benchmark killed by a time limit keeps what it printed)."""
  import jax  # here, not at the top: loss_memory.py must set XLA_FLAGS before jax starts

  row = {"name": name, "value": value, "unit": unit, "backend": jax.default_backend(),
         "device": str(jax.devices()[0].device_kind), "command": command(), **fields}
  print(json.dumps(row), flush=True)
  return row


def interleave(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
  """Median of what each side returns (its seconds), the sides called in turn each round, the order reversed
  every other round, so that a shared machine's slow phases fall on every side alike."""
  if rounds < 1:
    raise ValueError(f"rounds={rounds} must be >= 1")
  times: dict[str, list[float]] = {k: [] for k in sides}
  names = list(sides)
  for r in range(rounds):
    for k in (names if r % 2 == 0 else names[::-1]):
      times[k].append(sides[k]())
  return {k: statistics.median(v) for k, v in times.items()}
