"""Runs hyperclip-train with spies on every cross-process call the host can make outside a jitted program
(multihost_utils, the coordination-service barrier) and on jax.distributed.initialize; writes what they saw
to WORKDIR/spy_<process>.json. Used by test_slurm_run.py."""
import json
import os
import sys
import traceback

import jax
from jax.experimental import multihost_utils

from hyperclip_jax import distributed, train

calls, init_kwargs = [], {}


def _spy(owner, name):
  real = getattr(owner, name)

  def wrapper(*args, **kwargs):
    stack = traceback.extract_stack()[:-1]
    ours = [f for f in stack if f"hyperclip_jax{os.sep}" in f.filename]  # the innermost frame of the package
    calls.append({"fn": name, "origin": f"{os.path.basename(ours[-1].filename)}:{ours[-1].name}" if ours else "",
                  "in_checkpoint": any("checkpoint" in f.filename or "orbax" in f.filename for f in stack)})
    return real(*args, **kwargs)

  setattr(owner, name, wrapper)


def _spy_initialize():
  real = jax.distributed.initialize

  def wrapper(**kwargs):
    init_kwargs.update(kwargs)
    return real(**kwargs)

  jax.distributed.initialize = wrapper


if __name__ == "__main__":
  for fn in ("broadcast_one_to_all", "sync_global_devices", "process_allgather"):
    _spy(multihost_utils, fn)
  _spy(distributed, "barrier")
  _spy_initialize()
  argv = sys.argv[1:]
  rc = train.main(argv)
  workdir = argv[argv.index("--workdir") + 1]
  with open(os.path.join(workdir, f"spy_{jax.process_index()}.json"), "w") as f:
    json.dump({"rc": rc, "calls": calls, "initialize": init_kwargs}, f)
  sys.exit(rc)
