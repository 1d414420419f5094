"""hyperclip-train with one fault injected at a chosen moment (tests only): HYPERCLIP_FAULT=KIND:STEP[:POINT].

  kill_save:S:after_create   SIGKILL once the temporary directory of the step-S checkpoint exists
  kill_save:S:before_rename  SIGKILL with every file of step S written, before Orbax renames it into place
  kill_save:S:after_rename   SIGKILL right after the rename (the checkpoint is complete)
  pause:S                    before step S, touch WORKDIR.paused and wait for WORKDIR.go (a test sends SIGTERM
                             or starts a second trainer meanwhile)
  nan:S                      the batch of step S gets a NaN pixel (a corrupt image)
"""
import os
import signal
import sys
import time

import numpy as np
from orbax.checkpoint._src.path import atomicity

from hyperclip_jax import train
from hyperclip_jax.data import input_pipeline


def _workdir(argv):
  return argv[argv.index("--workdir") + 1]


def _patch_save(step, point):
  cls = atomicity.AtomicRenameTemporaryPath
  create, finalize = cls.create, cls.finalize

  def is_target(self):
    return self.get_final().name == str(step)

  async def patched_create(self):
    out = await create(self)
    if point == "after_create" and is_target(self):
      os.kill(os.getpid(), signal.SIGKILL)
    return out

  async def patched_finalize(self):
    if point == "before_rename" and is_target(self):
      os.kill(os.getpid(), signal.SIGKILL)
    await finalize(self)
    if point == "after_rename" and is_target(self):
      os.kill(os.getpid(), signal.SIGKILL)

  cls.create, cls.finalize = patched_create, patched_finalize


def faulty_iterators(make, step, action):
  """Wraps make_train_iterator so that `action(batch)` runs on the batch of train step `step` (1-based)."""

  class Faulty:
    def __init__(self, inner):
      self._inner = inner

    def __getattr__(self, name):
      return getattr(self._inner, name)

    def __iter__(self):
      return self

    def __next__(self):
      upcoming = self._inner.get_state()["next_step"] + 1
      batch = next(self._inner)
      if upcoming == step:
        action(batch)
      return batch

  return lambda *a, **k: Faulty(make(*a, **k))


def _patch_batches(step, action):
  input_pipeline.make_train_iterator = faulty_iterators(input_pipeline.make_train_iterator, step, action)


def _pause(workdir):
  def action(batch):
    del batch
    open(workdir + ".paused", "w").close()
    deadline = time.monotonic() + 300
    while not os.path.exists(workdir + ".go") and time.monotonic() < deadline:
      time.sleep(0.05)
  return action


def nan_pixel(batch):
  """A corrupt image as a host-side value_range would pass it on: float32 pixels, one of them NaN (uint8 batches
  cannot hold one; the train step takes float32 images as they are)."""
  image = input_pipeline.to_model_image(batch["image"]) if batch["image"].dtype == np.uint8 else batch["image"]
  image[0, 0, 0, 0] = float("nan")
  batch["image"] = image


def main(argv):
  kind, step, *point = os.environ.get("HYPERCLIP_FAULT", "none:0").split(":")
  step = int(step)
  if kind == "kill_save":
    _patch_save(step, point[0])
  elif kind == "pause":
    _patch_batches(step, _pause(_workdir(argv)))
  elif kind == "nan":
    _patch_batches(step, nan_pixel)
  return train.main(argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
