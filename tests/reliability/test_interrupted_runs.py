"""Kill -9 at three points of a checkpoint write, a second trainer, SIGTERM, then a rerun: one workdir,
one chain of runs, and the end state equals an uninterrupted run bit for bit."""
import os
import signal
import time

import pytest
from harness import complete_steps, error_line, last_metrics, partial_dirs, popen, run, shared_once

KILL_POINTS = ("after_create", "before_rename", "after_rename")  # of the step-8 checkpoint


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """(workdir, what each run did); the chain runs once even when xdist spreads these tests over workers."""
  return shared_once(tmp_path_factory, "reliability_chain", _run_chain)


def _run_chain(folder):
  os.makedirs(folder)
  workdir = str(folder / "run")
  seen = {}
  for point in KILL_POINTS:  # each run resumes from what the previous one left, then dies saving step 8
    proc = run(workdir, fault=f"kill_save:8:{point}")
    seen[point] = {"rc": proc.returncode, "stderr": proc.stderr, "complete": complete_steps(workdir),
                   "partial": partial_dirs(workdir)}

  trainer = popen(workdir, fault="pause:10")  # resumes from 8, waits before step 10
  deadline = time.monotonic() + 600
  while not os.path.exists(workdir + ".paused") and trainer.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
  second = run(workdir)  # while the first one holds the workdir
  trainer.send_signal(signal.SIGTERM)
  open(workdir + ".go", "w").close()
  out, err = trainer.communicate(timeout=600)
  seen["second"] = {"rc": second.returncode, "stderr": second.stderr}
  seen["sigterm"] = {"rc": trainer.returncode, "stderr": err, "complete": complete_steps(workdir)}

  final = run(workdir)
  seen["final"] = {"rc": final.returncode, "stderr": final.stderr, "partial": partial_dirs(workdir)}
  return [workdir, seen]


def test_kill_during_checkpoint_write_resumes_from_newest_complete(chain):
  _, seen = chain
  for point in KILL_POINTS:
    assert seen[point]["rc"] == -signal.SIGKILL, seen[point]["stderr"][-2000:]
  # killed before the rename: step 8 exists only as a temporary directory, never as a step
  assert seen["after_create"]["complete"] == [4] and seen["after_create"]["partial"]
  assert seen["before_rename"]["complete"] == [4] and seen["before_rename"]["partial"]
  assert seen["after_rename"]["complete"] == [4, 8]
  # each rerun resumed from the newest complete step: a written-but-unrenamed step 8 was not read
  assert "resumed from step 4" in seen["before_rename"]["stderr"]
  assert "resumed from step 4" in seen["after_rename"]["stderr"]
  assert "resumed from step 8" in seen["sigterm"]["stderr"]
  assert seen["final"]["partial"] == []  # the leftovers were cleaned up


def test_second_trainer_on_a_workdir_is_refused(chain):
  workdir, seen = chain
  assert seen["second"]["rc"] == 2
  line = error_line(seen["second"]["stderr"])
  assert f"workdir {workdir} is in use by another trainer (pid " in line
  # the lock of every kill -9'd trainer above vanished with it: each rerun started (and resumed)


def test_sigterm_saves_a_checkpoint_and_exits(chain):
  _, seen = chain
  assert seen["sigterm"]["rc"] == 75, seen["sigterm"]["stderr"][-2000:]
  line = error_line(seen["sigterm"]["stderr"])
  assert "stopped at step 10 after SIGTERM; checkpoint step 10 saved" in line and "rerun" in line
  assert seen["sigterm"]["complete"] == [4, 8, 10]


def test_rerun_after_every_fault_is_bit_exact(chain, reference):
  workdir, seen = chain
  assert seen["final"]["rc"] == 0, seen["final"]["stderr"][-2000:]
  assert "resumed from step 10" in seen["final"]["stderr"]
  assert last_metrics(workdir)["params_checksum"] == reference[1]
