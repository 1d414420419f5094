"""The trainer from configs/webdataset.py on shards and on a manifest written here: runs, counts bad samples,
resumes bit-exactly."""
import json
import os
import shutil

from conftest import jpeg, write_shards

from hyperclip_jax import config as config_lib
from hyperclip_jax import train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "webdataset.py")


def _config(arg, **overrides):
  # demo_words + the tiny demo shapes: the step compiles to the same program as tests/test_train.py's.
  config = config_lib.load_config(f"{CONFIG}:tiny=true,tokenizer=demo_words,steps=4,{arg}")
  for k, v in {"checkpoint_every_steps": 2, "data.shuffle_block": 8, **overrides}.items():
    config_lib.apply_override(config, k, str(v))
  return config


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_trainer_runs_from_webdataset_shards_and_resumes_exactly(tmp_path, capfd):
  pattern = write_shards(tmp_path / "shards", 4, 24, bad={5: "jpeg", 30: "empty"})
  workdir = str(tmp_path / "run")
  train.train(_config(f"pattern={pattern}"), workdir)
  rows = _rows(workdir)
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 2 and all(l == l and l > 0 for l in losses)
  assert "data/skipped/bad_image" in rows[-2]

  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  os.remove(os.path.join(resumed, "metrics.jsonl"))
  train.train(_config(f"pattern={pattern}"), resumed)
  assert "resumed from step 2" in capfd.readouterr().err
  assert _rows(resumed)[-1]["params_checksum"] == rows[-1]["params_checksum"]


def test_trainer_runs_from_a_manifest(tmp_path):
  (tmp_path / "img").mkdir()
  lines = []
  for i in range(40):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(i))
    lines.append(json.dumps({"image": f"img/{i}.jpg", "caption": f"a red circle number {i}"}))
  (tmp_path / "m.jsonl").write_text("\n".join(lines))
  workdir = str(tmp_path / "run")
  train.train(_config(f"source=manifest,manifest={tmp_path / 'm.jsonl'}", total_steps=2), workdir)
  rows = _rows(workdir)
  assert any("train/loss" in r for r in rows) and rows[-1]["params_checksum"]


def test_a_pattern_that_matches_nothing_is_a_one_line_config_error(tmp_path, capsys):
  code = train.main(["--config", f"{CONFIG}:tiny=true,pattern={tmp_path}/none/{{0..9}}.tar",
                     "--workdir", str(tmp_path / "w")])
  assert code == 2
  assert "matches 0 shard files" in capsys.readouterr().err
