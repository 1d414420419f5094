"""The uninterrupted reference run of the reliability tests (see harness.py for the run they all share)."""
import pytest
from harness import complete_steps, last_metrics, run, shared_once


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """(workdir, params_checksum) of the uninterrupted run."""
  def make(workdir):
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert complete_steps(workdir) == [4, 8, 12]
    return [str(workdir), last_metrics(str(workdir))["params_checksum"]]
  return tuple(shared_once(tmp_path_factory, "reliability_reference", make))
