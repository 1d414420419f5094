"""What the trainer reads is data, never code: no pickle in any format we read, and bad config/CLI values
are one-line errors (the data pipeline's own inputs are tested in tests/data)."""
import os
import re

import pytest
from harness import ROOT

from hyperclip_jax import train

PICKLE = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|joblib)\b|allow_pickle\s*=\s*True|torch\.load\(",
                    re.M)


def test_no_pickle_anywhere_in_the_package():
  hits = []
  for d, _, files in os.walk(os.path.join(ROOT, "hyperclip_jax")):
    for f in files:
      if f.endswith(".py"):
        with open(os.path.join(d, f), encoding="utf-8") as fh:
          hits += [f"{f}: {m.group(0).strip()}" for m in PICKLE.finditer(fh.read())]
  assert not hits, hits


@pytest.mark.parametrize("override, message", [
    ("--config.resume=never", "config.resume='never' is unknown; known: auto, fresh"),
    ("--config.skip_nonfinite_steps=perhaps", "config.skip_nonfinite_steps='perhaps' is not a bool"),
    ("--config.checkpoint_every_secs=-1", "config.checkpoint_every_secs=-1.0 must be >= 0"),
    ("--config.resume", "--config.resume needs a value"),
])
def test_bad_reliability_settings_are_one_line_errors(override, message, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  argv = ["--config", "configs/demo.py:tiny=true", "--workdir", str(tmp_path / "w"), override]
  assert train.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err, err
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
