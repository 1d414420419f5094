"""hyperclip-predict on image files: top-k text and JSON output, unreadable files reported and skipped."""
import json

import numpy as np
from PIL import Image

from hyperclip_jax import export, predict


def _write_images(tmp_path):
  rng = np.random.default_rng(0)
  paths = []
  for i, (size, mode) in enumerate([(32, "RGB"), (57, "RGB"), (40, "L")]):  # any size and mode is resized
    array = rng.integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size), dtype=np.uint8)
    path = tmp_path / f"img{i}.{'png' if i != 1 else 'jpg'}"
    Image.fromarray(array, mode).save(path)
    paths.append(str(path))
  return paths


def test_predict_prints_top_k_with_scores_matching_the_classifier(exported, tmp_path, capsys):
  paths = _write_images(tmp_path)
  assert predict.main(["--model", str(exported), "--top-k", "3", *paths]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split(":")[0] for l in lines] == paths
  clf = export.load_classifier(str(exported))
  scores = clf.scores(clf(predict.read_image(paths[1], 32)[None]))[0]
  best = np.argsort(-scores)[:3]
  assert lines[1] == f"{paths[1]}: " + ", ".join(f"{clf.classes[i]} {scores[i]:.3f}" for i in best)


def test_predict_json_and_unreadable_images(exported, tmp_path, capsys):
  paths = _write_images(tmp_path)
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not an image")
  code = predict.main(["--model", str(exported), "--json", "--top-k", "2", paths[0], str(bad),
                       str(tmp_path / "missing.png"), paths[2]])
  out, err = capsys.readouterr()
  assert code == 1
  rows = [json.loads(l) for l in out.strip().splitlines()]
  assert [r["image"] for r in rows] == [paths[0], paths[2]]
  assert all(len(r["top"]) == 2 and r["top"][0]["score"] >= r["top"][1]["score"] for r in rows)
  assert all(0.0 <= t["score"] <= 1.0 and t["class"] in export.load_classifier(str(exported)).classes
             for r in rows for t in r["top"])
  err_lines = err.strip().splitlines()
  assert len(err_lines) == 3 and "cannot read" in err_lines[0] and "broken.jpg" in err_lines[0]
  assert "missing.png" in err_lines[1] and err_lines[2].endswith("2 of 4 image(s) could not be read")


def test_predict_on_a_directory_that_is_no_classifier(tmp_path, capsys):
  assert predict.main(["--model", str(tmp_path), "x.png"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not an exported classifier (no manifest.json)" in err
