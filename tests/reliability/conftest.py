"""The uninterrupted reference run of the reliability tests (see harness.py for the run they all share)."""
import fcntl
import os

import pytest

from harness import complete_steps, last_metrics, run


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """(workdir, params_checksum) of the uninterrupted run; made once and shared by the xdist workers."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps share this run's parent directory
    shared = shared.parent
  workdir = shared / "reliability_reference"
  with open(shared / "reliability_reference.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "final_eval.json").exists():
      proc = run(workdir)
      assert proc.returncode == 0, proc.stderr[-3000:]
  assert complete_steps(workdir) == [4, 8, 12]
  return str(workdir), last_metrics(str(workdir))["params_checksum"]
