"""hyperclip-export and load_classifier: the exported artifact gives the unfolded model's zero-shot logits."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from export_runs import ROOT, make_run

from hyperclip_jax import evaluators, export
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.evaluators import classnames, recalibrate
from hyperclip_jax.models import two_towers


def _images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _export(workdir, out, spec):
  names, templates = classnames.resolve(spec)
  export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out))


def _compare(workdir, out):
  """The exported classifier's logits against the unfolded model's zero-shot logits; returns the classifier."""
  clf = export.load_classifier(str(out))
  names, templates = clf.classes, clf.manifest["templates"]
  run = workdir_lib.load_run(workdir)
  model = two_towers.build_model(run.config)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  tok = tokenizers.get_tokenizer(run.config.data.tokenizer)
  zcls = export.class_embeddings(model, params, tok, run.config.data.max_len, names, templates)
  images = _images(5)
  x = jnp.asarray(images, jnp.float32) * (2 / 255) - 1
  ref = np.asarray(export.unfolded_logits(model, params, batch_stats, zcls, x))
  got = clf(images)
  assert got.shape == (5, len(names))
  t, b = clf.manifest["temperature"], clf.manifest["bias"]
  cos_ref, cos_got = (ref - b) / t, (got - b) / t  # compare similarities too: the bias alone dwarfs them
  assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))
  assert np.max(np.abs(cos_got - cos_ref)) <= 1e-4 * np.max(np.abs(cos_ref))
  assert np.std(cos_ref) > 1e-3  # the classes are told apart: not a degenerate comparison
  np.testing.assert_allclose(clf(images[2:3]), got[2:3], rtol=1e-5, atol=1e-5)  # dynamic batch
  return clf


def test_trained_hyperclip_export_matches_unfolded_logits(trained_run, exported):
  clf = _compare(trained_run, exported)
  manifest = clf.manifest
  assert clf.classes == ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"]
  assert clf.input_size == 32 and isinstance(clf.input_size, int)
  assert manifest["source"]["step"] == 2 and len(manifest["source"]["config_hash"]) == 16
  assert manifest["model"]["image_encoder"] == "efficientnet_b0" and manifest["score"] == "sigmoid"


@pytest.mark.parametrize("variant,encoder", [("hyperclip", "efficientnet_b0"), ("siglip", "efficientnet_b0"),
                                             ("hyperclip", "mobilenetv3_small_100"),
                                             ("hyperclip", "vit_tiny_patch16_224"),
                                             ("linear", "efficientnet_b0"), ("conv", "efficientnet_b0"),
                                             ("conv", "mobilenetv3_small_100")])
def test_export_matches_unfolded_logits(tmp_path, variant, encoder):
  workdir = make_run(tmp_path / "run", variant, encoder)
  _export(workdir, tmp_path / "clf", "demo:shape")
  _compare(workdir, tmp_path / "clf")


def test_export_of_a_remat_run_matches(tmp_path):
  workdir = make_run(tmp_path / "run", **{"model.remat": True})  # remat is a training-memory option only
  _export(workdir, tmp_path / "clf", "demo:colour")
  _compare(workdir, tmp_path / "clf")


def test_each_target_platform_gets_its_own_conv_form(trained_run, exported, tmp_path):
  """A CPU artifact carries the shift-add/dot forms (one convolution: the stem), a CUDA one exported from this
  CPU-only machine the library convolutions, and a CPU+CUDA one both, computing on CPU what the CPU one does."""
  def artifact(out):
    with open(os.path.join(out, export.ARTIFACT), "rb") as f:
      return jax.export.deserialize(bytearray(f.read()))
  names, templates = classnames.resolve("demo:colour")
  run = workdir_lib.load_run(trained_run)
  for platforms in (("cuda",), ("cpu", "cuda")):
    export.export_classifier(run, names, templates, str(tmp_path / "_".join(platforms)), platforms=platforms)
  convs = {p: artifact(out).mlir_module().count("stablehlo.convolution")
           for p, out in (("cpu", exported), ("cuda", tmp_path / "cuda"), ("both", tmp_path / "cpu_cuda"))}
  assert convs["cpu"] == 1 and convs["cuda"] > 10 and convs["both"] > convs["cuda"]
  assert artifact(tmp_path / "cpu_cuda").platforms == ("cpu", "cuda")
  images = _images(4)
  np.testing.assert_allclose(export.load_classifier(str(tmp_path / "cpu_cuda"))(images),
                             export.load_classifier(str(exported))(images), rtol=1e-5, atol=1e-5)


def test_export_conditioned_on_the_mean_of_training_caption_sets(trained_run, exported, tmp_path):
  """--condition train_sets_mean: the folded classifier computes the unfolded model under the norm params
  averaged over the sets (hyperclip-eval's condition), not those of the class set."""
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(out), "--platforms", "cpu",
                      "--condition", "train_sets_mean", "--condition-sets", "2"]) == 0
  clf = export.load_classifier(str(out))
  assert clf.manifest["condition"] == {"train_sets_mean": 2}
  run = workdir_lib.load_run(trained_run)
  model = two_towers.build_model(run.config)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  tok = tokenizers.get_tokenizer(run.config.data.tokenizer)
  zcls = export.class_embeddings(model, params, tok, run.config.data.max_len, clf.classes, clf.manifest["templates"])
  captions = evaluators.condition_captions(run.config, 2)
  zset = export.class_embeddings(model, params, tok, run.config.data.max_len, captions, ["{}"])
  zsets = zset.reshape(2, run.config.model.hyper.set_size, -1)
  images = _images(6)
  x = jnp.asarray(images, jnp.float32) * (2 / 255) - 1
  ref = np.asarray(export.unfolded_logits(model, params, batch_stats, zcls, x, zsets))
  got = clf(images)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  by_classes = export.load_classifier(str(exported))(images)
  assert np.abs(by_classes - got).max() > 1e-3  # the conditioning set matters
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(tmp_path / "bad"),
                      "--condition", "train_sets_mean", "--condition-sets", "0"]) == 2


def test_export_with_batchnorm_stats_recalibrated_under_the_folded_norm_params(trained_run, exported, tmp_path):
  """--recalibrate-bn N: the folded classifier computes the unfolded model with the running stats re-estimated
  over N held-out training images under the class set's norm params (hyperclip-eval's recalibrate_bn)."""
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(out), "--platforms", "cpu",
                      "--recalibrate-bn", "16"]) == 0
  clf = export.load_classifier(str(out))
  assert clf.manifest["recalibrate_bn"] == 16
  run = workdir_lib.load_run(trained_run)
  model = two_towers.build_model(run.config)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  tok = tokenizers.get_tokenizer(run.config.data.tokenizer)
  zcls = export.class_embeddings(model, params, tok, run.config.data.max_len, clf.classes, clf.manifest["templates"])
  generated = model.generate_mean(params, jnp.asarray(zcls)[None])
  stats = recalibrate.reestimate(model.image_moments, params, batch_stats, generated,
                                 recalibrate.heldout_images(run.config, 16), 16)
  images = _images(6)
  x = jnp.asarray(images, jnp.float32) * (2 / 255) - 1
  ref = np.asarray(export.unfolded_logits(model, params, stats, zcls, x))
  got = clf(images)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  assert np.abs(export.load_classifier(str(exported))(images) - got).max() > 1e-3  # the trained stats differ
  assert export.main(["--workdir", trained_run, "--classes", "demo:colour", "--out", str(tmp_path / "bad"),
                      "--recalibrate-bn", "-1"]) == 2


def test_export_directory_holds_folded_params_classes_and_manifest(tmp_path):
  workdir = make_run(tmp_path / "run")
  out = tmp_path / "clf"
  names, templates = classnames.resolve("demo:colour")
  export.export_classifier(workdir_lib.load_run(workdir), names, templates, str(out))
  assert sorted(os.listdir(out)) == ["README.md", "classes.json", "classifier.jaxexport", "manifest.json", "params"]
  assert json.loads((out / "classes.json").read_text("utf-8")) == names
  manifest = json.loads((out / "manifest.json").read_text("utf-8"))
  assert manifest["input_size"] == 32 and manifest["preprocessing"] == "resize(32)|value_range(-1, 1)"
  assert manifest["source"]["step"] == 3 and manifest["templates"] == templates
  assert manifest["temperature"] == pytest.approx(10.0) and manifest["bias"] == pytest.approx(-2.0)
  restored = ocp.StandardCheckpointer().restore(str((out / "params").absolute()))
  assert restored["zcls"].shape == (len(names), 32)
  np.testing.assert_allclose(np.linalg.norm(restored["zcls"], axis=1), 1.0, rtol=1e-5)
  leaves = ["/".join(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(restored["image"])]
  assert "encoder/stem/conv/bias" in leaves and not any("/bn" in p for p in leaves)


def test_load_classifier_needs_neither_flax_nor_the_model(exported):
  out = exported
  code = ("import sys, numpy as np\n"
          "from hyperclip_jax.export import load_classifier\n"
          f"clf = load_classifier({str(out)!r})\n"
          "logits = clf(np.zeros((3, clf.input_size, clf.input_size, 3), np.uint8))\n"
          "assert logits.shape == (3, len(clf.classes)), logits.shape\n"
          "bad = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax', 'grain')\n"
          "       or m.startswith('hyperclip_jax.models')]\n"
          "assert not bad, bad\n"
          "print('ok', len(clf.classes))\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "ok 8"


def test_wrong_input_size_is_a_one_line_error(exported):
  clf = export.load_classifier(str(exported))
  with pytest.raises(ValueError, match=r"^images must be uint8 \[N, 32, 32, 3\] \(RGB\); got uint8 \[2, 48, 48, 3\]"
                                       r": resize to 32x32 first[^\n]*$"):
    clf(_images(2, size=48))
  with pytest.raises(ValueError, match="got float32"):
    clf(_images(2).astype(np.float32))


def test_export_cli_errors_are_one_line(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  assert export.main(["--workdir", str(empty), "--classes", "cifar10", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "has no checkpoint; train one first: hyperclip-train" in err
  assert export.main(["--workdir", str(tmp_path / "nowhere"), "--classes", "cifar10", "--out", "o"]) == 2
  assert "has no config.json" in capsys.readouterr().err
  dup = tmp_path / "dup.txt"
  dup.write_text("cat\ndog\ncat\n", encoding="utf-8")
  assert export.main(["--workdir", str(empty), "--classes", str(dup), "--out", "o"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'cat' on line 3 repeats line 1" in err
  assert export.main(["--workdir", str(empty), "--classes", "imagenet", "--out", "o"]) == 2
  assert "neither a file nor a known list; known: imagenet1k, cifar100, cifar10" in capsys.readouterr().err
  assert export.main(["--workdir", str(empty), "--classes", "cifar10", "--out", "o", "--format", "onnx,pt"]) == 2
  assert "--format 'pt' is unknown; known: stablehlo, onnx, tflite, timm" in capsys.readouterr().err


def test_export_cli_writes_a_classifier_from_a_class_file(trained_run, tmp_path, capsys):
  classes = tmp_path / "classes.txt"
  classes.write_text("red\ngreen\nbleu clair ☀\n", encoding="utf-8")
  templates = tmp_path / "templates.txt"
  templates.write_text("a photo of a {}.\nthe {} shape.\n", encoding="utf-8")
  out = tmp_path / "clf"
  assert export.main(["--workdir", trained_run, "--classes", str(classes), "--templates", str(templates),
                      "--out", str(out)]) == 0
  assert "exported 3 classes x 2 templates from step 2" in capsys.readouterr().out
  clf = export.load_classifier(str(out))
  assert clf.classes == ["red", "green", "bleu clair ☀"]
  assert clf(_images(4)).shape == (4, 3)
