"""--format tflite without TensorFlow: one-line errors that name the install command, before anything is written;
the check's comparison and the int8 report (numpy only). The conversion itself is tested in its own venv:
tests/tflite (`make test-tflite`)."""
import sys

import numpy as np
import pytest
from export_runs import make_run, tiny_config

from hyperclip_jax import export, export_tflite
from hyperclip_jax.evaluators import task_images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("run"))


def _cli(run_dir, out, *extra):
  return export.main(["--workdir", run_dir, "--classes", "demo:colour", "--out", str(out), "--format", "tflite",
                      *extra])


def test_without_tensorflow_the_error_names_the_install_command(run_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails as if not installed
  monkeypatch.delenv(export_tflite.ENV, raising=False)
  out = tmp_path / "clf"
  assert _cli(run_dir, out) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--format tflite needs TensorFlow and LiteRT, which this python lacks" in err
  assert "`make tflite` and pass --tflite-python .venv-tflite/bin/python" in err
  assert "tensorflow-cpu==2.21.0 ai-edge-litert==2.3.0" in err
  assert not out.exists()


def test_a_tflite_python_that_is_missing_or_lacks_tensorflow_is_a_one_line_error(run_dir, tmp_path, capsys,
                                                                                 monkeypatch):
  out = tmp_path / "clf"
  assert _cli(run_dir, out, "--tflite-python", str(tmp_path / "nope" / "python")) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nope/python' is not an executable file; run `make tflite`" in err
  monkeypatch.setenv(export_tflite.ENV, sys.executable)  # the env var works as the flag; this venv has no TF
  assert _cli(run_dir, out) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"--tflite-python {sys.executable!r} lacks tensorflow ai_edge_litert" in err
  assert not out.exists()


def test_int8_needs_the_tflite_format_and_a_count(run_dir, tmp_path, capsys):
  assert export.main(["--workdir", run_dir, "--classes", "demo:colour", "--out", str(tmp_path / "o"),
                      "--tflite-int8", "8"]) == 2
  assert "--tflite-int8 quantises the tflite file: add tflite to --format" in capsys.readouterr().err
  with pytest.raises(export.ExportError, match=r"^--tflite-int8 -1 must be a count of representative images"):
    export.export_classifier(None, ["a", "b"], ["a {}."], str(tmp_path / "o"), formats=("tflite",), tflite_int8=-1)
  assert not (tmp_path / "o").exists()


def test_the_check_fails_past_the_tolerance_and_reports_within_it():
  rng = np.random.default_rng(0)
  want = rng.normal(0, 5, (8, 4)).astype(np.float32)
  versions = {"tensorflow": "x", "ai_edge_litert": "y"}
  got = export_tflite.compare(want + 1e-5, want[1:2], want, versions)
  assert got["max_abs_diff"] == pytest.approx(1e-5, rel=1e-2) and got["images"] == 8
  assert got["tolerance"] == pytest.approx(1e-4 * np.max(np.abs(want)) + 1e-4) and got["top1_agreement"] == 1.0
  assert got["tensorflow"] == "x" and got["interpreter"] == "ai_edge_litert"
  with pytest.raises(export_tflite.ConversionError, match=r"^classifier.tflite differs from the jax artifact by 0.01 "):
    export_tflite.compare(want, want[1:2] + 0.01, want, versions)  # the batch-1 run counts too
  with pytest.raises(export_tflite.ConversionError, match=r"gave logits \[8, 3\], the jax artifact \[8, 4\]$"):
    export_tflite.compare(want[:, :3], want[1:2], want, versions)


def test_the_int8_report_scores_both_files_against_the_labels():
  want = np.asarray([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])  # jax: all 4 right
  result = {"eval_float32": want + 1e-6, "eval_int8": np.asarray([[2.0, 0.0], [2.5, 2.0], [2.0, 0.1], [0, 2.0]])}
  report = export_tflite.int8_report(result, want, np.asarray([0, 1, 0, 1]), "colour", 16)
  ev = report["eval"]
  assert report["file"] == "classifier_int8.tflite" and report["representative_images"] == 16
  assert (ev["task"], ev["images"], ev["top1_jax"], ev["top1_float32"], ev["top1_int8"]) == ("colour", 4, 1, 1, .75)
  assert ev["top1_change"] == -0.25 and ev["top1_agreement_with_jax"] == 0.75
  assert ev["max_abs_logit_diff"] == pytest.approx(2.5)


def test_the_runs_eval_images_for_a_class_list():
  config = tiny_config()
  from hyperclip_jax.evaluators import classnames
  names, _ = classnames.resolve("demo:shape")
  task, images, labels = task_images.eval_images(config, names)
  n = config.evals.zeroshot.n_eval
  assert task == "shape" and images.shape == (n, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (n,)
  assert set(labels.tolist()) <= set(range(len(names))) and len(set(labels.tolist())) > 1
  assert images.std() > 10  # real pictures, not a constant
  _, first, _ = task_images.eval_images(config, names, limit=5)
  np.testing.assert_array_equal(first, images[:5])
  with pytest.raises(ValueError, match=r"no zero-shot task with these 2 classes in this order \(it has: colour "):
    task_images.eval_images(config, ["red", "blue"])


def test_a_failure_in_the_tensorflow_python_is_one_line_naming_the_cause(tmp_path):
  fake = tmp_path / "python"  # stands in for .venv-tflite/bin/python: TensorFlow's log lines, then ours
  fake.write_text(f"#!/bin/sh\necho '{export_tflite.MARK}the int8 file failed: DIV' >&2\necho 'I0000 log' >&2\n"
                  "exit 3\n")
  fake.chmod(0o755)
  with pytest.raises(export_tflite.ConversionError, match=r"^the TFLite converter in .*python failed: the int8 "
                                                          r"file failed: DIV$"):
    export_tflite._subprocess(str(fake), "convert")
  fake.write_text("#!/bin/sh\necho 'I0000 log' >&2\nkill -9 $$\n")
  with pytest.raises(export_tflite.ConversionError, match=r"python failed: killed by signal 9$"):
    export_tflite._subprocess(str(fake), "convert")
