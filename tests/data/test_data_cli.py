"""hyperclip-data stats / filter on shards written here."""
import json
import tarfile

import pytest
from conftest import add_member, jpeg, truncate, write_shards

from hyperclip_jax.data import cli
from hyperclip_jax.data.sources import webdataset


def test_stats_json_counts_good_skipped_and_caption_tokens(tmp_path, capsys):
  pattern = write_shards(tmp_path / "s", 3, 4, bad={0: "jpeg", 5: "empty", 6: "nocaption"})
  truncate(tmp_path / "s" / "shard-002.tar")  # its last sample (11) is cut off
  cli.main(["stats", pattern, "--json", "--workers", "1", "--max-len", "9"])
  out = json.loads(capsys.readouterr().out)
  assert out["shards"] == 3 and out["good"] == 12 - 4
  assert {k: v for k, v in out["skipped"].items() if v} == {
      "bad_image": 1, "empty_caption": 1, "missing_caption": 1, "truncated_tar": 1}
  tokens = out["caption_tokens"]  # 'sample N' + EOS, in bytes
  assert (tokens["min"], tokens["max"], tokens["over_max_len"]) == (9, 10, 1)  # only "sample 10" is longer
  cli.main(["stats", pattern, "--workers", "1"])
  assert "good samples: 8" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="yields no usable sample"):
    cli.main(["stats", str(tmp_path / "none-{0..2}.tar"), "--workers", "1"])


def test_filter_keeps_captions_naming_imagenet_classes(tmp_path, capsys):
  captions = ["a goldfish in a bowl", "my holiday", "Great White Shark attack!", "tenches", "a tench", "   "]
  (tmp_path / "in").mkdir()
  with tarfile.open(tmp_path / "in" / "0.tar", "w") as tar:
    for i, caption in enumerate(captions):
      add_member(tar, f"k{i}.jpg", jpeg(i))
      add_member(tar, f"k{i}.txt", caption.encode())
      add_member(tar, f"k{i}.json", json.dumps({"i": i}).encode())
  cli.main(["filter", str(tmp_path / "in" / "0.tar"), "--out", str(tmp_path / "out"), "--workers", "1",
            "--samples-per-shard", "2"])
  assert "kept 3 of 5 good samples" in capsys.readouterr().out
  stats = json.loads((tmp_path / "out" / "stats.json").read_text())
  assert stats["per_class"] == {"goldfish": 1, "great white shark": 1, "tench": 1}
  assert stats["skipped"] == {"empty_caption": 1} and stats["output_shards"] == 2
  kept = [s for path in webdataset.expand_pattern(stats["output_pattern"]) for s in webdataset.read_shard(path)]
  assert [s["txt"].decode() for s in kept] == ["a goldfish in a bowl", "Great White Shark attack!", "a tench"]
  assert [json.loads(s["json"])["i"] for s in kept] == [0, 2, 4] and all(s["jpg"] for s in kept)


def test_filter_with_a_class_file_and_a_missing_one(tmp_path):
  write_shards(tmp_path / "s", 1, 3)
  (tmp_path / "classes.txt").write_text("sample 1\n")
  out = tmp_path / "out"
  cli.main(["filter", str(tmp_path / "s" / "shard-000.tar"), "--out", str(out), "--classes",
            str(tmp_path / "classes.txt"), "--workers", "1"])
  assert json.loads((out / "stats.json").read_text())["kept"] == 1
  with pytest.raises(SystemExit, match="neither a shipped list"):
    cli.main(["filter", str(tmp_path / "s" / "shard-000.tar"), "--out", str(out), "--classes", "nope.txt"])
