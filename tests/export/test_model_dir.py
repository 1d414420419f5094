"""hyperclip-export --model-only: the whole model as plain Orbax params + config + tokenizer spec, and everything
that takes a training workdir taking the model directory instead, with the same results."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from export_runs import make_run

import hyperclip_jax
from hyperclip_jax import evaluate, export
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("model_dir")
  workdir = make_run(tmp / "run")
  out = tmp / "model"
  assert export.main(["--workdir", workdir, "--model-only", "--out", str(out)]) == 0
  return workdir, str(out)


def test_model_dir_restores_with_plain_orbax_and_no_project_import(run_and_model, tmp_path):
  workdir, model = run_and_model
  assert sorted(os.listdir(model)) == ["README.md", "config.json", "model.json", "params", "tokenizer.json"]
  code = ("import json, sys, numpy as np, jax\n"
          "import orbax.checkpoint as ocp\n"
          f"tree = ocp.StandardCheckpointer().restore({os.path.join(model, 'params')!r})\n"
          "flat = {'/'.join(str(getattr(k, 'key', k)) for k in p): np.asarray(v)\n"
          "        for p, v in jax.tree_util.tree_leaves_with_path(tree)}\n"
          f"np.savez({str(tmp_path / 'flat.npz')!r}, **flat)\n"
          f"config = json.load(open({os.path.join(model, 'config.json')!r}))\n"
          f"tok = json.load(open({os.path.join(model, 'tokenizer.json')!r}))\n"
          "bad = [m for m in sys.modules if m.split('.')[0] == 'hyperclip_jax']\n"
          "assert not bad, bad\n"
          "print(sorted(tree['params']), config['model']['image']['name'], tok['spec'], tok['max_len'])\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "['b', 'hyper', 'img', 't', 'txt'] efficientnet_b0 demo_words 24"
  run = workdir_lib.load_run(workdir)
  want = _leaves({"params": jax.device_get(run.params), "batch_stats": jax.device_get(run.batch_stats)})
  with np.load(tmp_path / "flat.npz") as got:
    assert sorted(got.files) == sorted(want)
    for k, v in want.items():
      assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
  assert float(np.exp(want["params/t"])) == pytest.approx(10.0)  # the temperature t' and bias b are there
  assert float(want["params/b"]) == pytest.approx(-2.0)
  meta = json.loads(open(os.path.join(model, "model.json")).read())
  assert meta["source"]["step"] == 3 and meta["source"]["config_hash"] == run.config_hash
  assert meta["variant"] == "hyperclip" and meta["image_size"] == 32


def test_export_from_a_model_dir_equals_export_from_the_workdir_bit_for_bit(run_and_model, tmp_path):
  workdir, model = run_and_model
  for name, source in (("from_run", workdir), ("from_model", model)):
    assert export.main(["--workdir", source, "--classes", "demo:shape", "--out", str(tmp_path / name)]) == 0
  a, b = (tmp_path / "from_run" / export.ARTIFACT).read_bytes(), (tmp_path / "from_model" / export.ARTIFACT).read_bytes()
  assert len(a) > 10_000 and a == b
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  la = export.load_classifier(str(tmp_path / "from_run"))(images)
  lb = export.load_classifier(str(tmp_path / "from_model"))(images)
  assert np.array_equal(la, lb) and np.std(la) > 0
  ma, mb = (json.loads((tmp_path / n / export.MANIFEST).read_text()) for n in ("from_run", "from_model"))
  assert ma["source"].pop("workdir") != mb["source"].pop("workdir")
  assert ma == mb  # same step, config hash, temperature, bias, ...


def test_load_model_rebuilds_the_model(run_and_model):
  workdir, model = run_and_model
  loaded = hyperclip_jax.load_model(model)
  run = workdir_lib.load_run(workdir)
  assert loaded.step == 3 and loaded.config.model.image.name == "efficientnet_b0"
  want = _leaves(jax.device_get(run.params))
  got = _leaves(loaded.params)
  assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
  z = loaded.encode_text(["a red circle", "a blue square"])
  ref = jax.jit(loaded.model.encode_text)(run.params, loaded.tokenizer.encode(["a red circle", "a blue square"], 24))
  assert z.shape == (2, 32) and np.array_equal(z, np.asarray(ref))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_model_dir_errors_are_one_line(run_and_model, tmp_path, capsys):
  _, model = run_and_model
  assert export.main(["--workdir", model, "--step", "5", "--classes", "demo:shape", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "holds step 3 only; drop --step or pass --step 3" in err
  assert export.main(["--workdir", model, "--out", str(tmp_path / "x")]) == 2
  assert "--classes is required (or pass --model-only" in capsys.readouterr().err
  with pytest.raises(ValueError, match="is not a model directory .* hyperclip-export --workdir RUN --model-only"):
    hyperclip_jax.load_model(str(tmp_path))


def test_eval_on_a_model_dir_reproduces_the_trained_run(trained_run, tmp_path):
  model = str(tmp_path / "model")
  assert export.main(["--workdir", trained_run, "--model-only", "--out", model]) == 0
  step, results = evaluate.evaluate(model)
  with open(os.path.join(trained_run, "final_eval.json")) as f:
    final = json.load(f)
  assert step == 2 and set(results) == set(final) == {"colour", "shape", "position"}
  for task, r in final.items():
    assert results[task]["top1"] == pytest.approx(r["top1"], abs=1e-9)
  assert evaluate.main(["--workdir", model]) == 0  # the command line takes it too
  with open(os.path.join(model, "eval", "step_2.json")) as f:
    assert json.load(f)["results"]["shape"]["top1"] == pytest.approx(final["shape"]["top1"], abs=1e-9)
  meta = json.loads(open(os.path.join(model, "model.json")).read())  # the run's logged metrics travel along
  assert meta["eval_metrics"]["zeroshot/colour/top1"] == pytest.approx(final["colour"]["top1"], abs=1e-6)
  card = open(os.path.join(model, "README.md"), encoding="utf-8").read()
  assert f"| zeroshot/colour/top1 | {final['colour']['top1']:.4f} |" in card
  assert "efficientnet_b0 (hyperclip), step 2" in card and "US20260094424A1" in card


def test_a_vocabulary_file_travels_with_the_model(tmp_path):
  shipped = os.path.join(os.path.dirname(hyperclip_jax.__file__), "data", "vocab", "bpe_simple_vocab_16e6.txt.gz")
  vocab = tmp_path / "vocab" / "bpe.txt.gz"
  vocab.parent.mkdir()
  vocab.write_bytes(open(shipped, "rb").read())
  workdir = make_run(tmp_path / "run", **{"data.tokenizer": f"clip_bpe(vocab='{vocab}')"})
  texts = ["a red circle", "a blue square"]
  run = workdir_lib.load_run(workdir)
  tok = tokenizers.get_tokenizer(run.config.data.tokenizer)
  want = np.asarray(jax.jit(two_towers.build_model(run.config).encode_text)(run.params, tok.encode(texts, 24)))
  out = tmp_path / "model"
  assert export.main(["--workdir", workdir, "--model-only", "--out", str(out)]) == 0
  vocab.unlink()  # the model directory no longer needs the run's files
  assert json.loads((out / "tokenizer.json").read_text())["files"] == {str(vocab): "tokenizer/bpe.txt.gz"}
  loaded = hyperclip_jax.load_model(str(out))
  assert loaded.config.data.tokenizer == f"clip_bpe(vocab='{out / 'tokenizer' / 'bpe.txt.gz'}')"
  assert loaded.tokenizer.vocab_size == tok.vocab_size > 40_000
  assert np.array_equal(loaded.encode_text(texts), want)
  step, _ = evaluate.evaluate(str(out), workdir_lib.read_config(str(out)))  # its own config: the same model
  assert step == 3
