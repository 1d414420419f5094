"""bench/soak.py in short form: SIGTERM then kill -9 at random moments, restart, and the end state equals the
uninterrupted run with every data position seen exactly once."""
import os
import sys

from harness import ROOT, STEPS

sys.path.insert(0, os.path.join(ROOT, "bench"))
import soak  # noqa: E402


def test_short_soak_ends_bit_exact_with_no_sample_lost_or_repeated(reference, tmp_path):
  report = soak.soak(str(tmp_path / "soak"), minutes=3, steps=STEPS, checkpoint_every=4, seed=1,
                     reference=reference[1], max_kills=2, delay=(12.0, 30.0), kinds=["SIGTERM", "SIGKILL"],
                     log=lambda m: print(m, file=sys.stderr))
  assert report["ok"], report
  assert report["samples_seen"] == report["samples_expected"] == STEPS * 32
  assert report["samples_lost"] == report["samples_repeated"] == 0
