"""config.evals: zero-shot on labelled TFDS / manifest data, retrieval and linear probe in the trainer, errors."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from hyperclip_jax import config as config_lib
from hyperclip_jax import evaluators, sharding, train, validation
from hyperclip_jax.data import pp as pp_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.data.sources import demo
from hyperclip_jax.evaluators import zeroshot
from hyperclip_jax.models import two_towers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo.py")
PP = "resize(32)|value_range(-1, 1)"
SCALE = 0.3  # large enough that images get different embeddings and predictions


def _tiny(variant="hyperclip", bytes_tokens=False, **evals):
  config = config_lib.load_config(f"{DEMO}:tiny=true,variant={variant}")
  config.evals = ml_collections.ConfigDict(evals)
  if bytes_tokens:  # the demo's word tokenizer maps CIFAR's class names to one unknown token
    config.data.tokenizer, config.data.max_len = "bytes", 48
  return config


def _model(config, seed=0):
  """The tiny model with every weight perturbed, so the hypernet generates non-zero norm params."""
  model = two_towers.build_model(config)
  variables = model.init(jax.random.PRNGKey(seed))
  leaves, treedef = jax.tree.flatten(variables["params"])
  rng = np.random.default_rng(seed)
  leaves = [p + SCALE * rng.normal(size=p.shape).astype(p.dtype) for p in leaves]
  return model, jax.tree.unflatten(treedef, leaves), variables["batch_stats"]


def _build(config, model):
  validation.validate(config, jax.device_count())
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  return evaluators.build(config, model, tokenizer, sharding.make_mesh(config.mesh)), tokenizer


def _hand_topk(model, params, batch_stats, tokenizer, max_len, images, class_names, templates):
  """top-1 / top-5 predictions from the model's own functions, all images in one batch."""
  texts = [t.format(c) for c in class_names for t in templates]
  z = np.asarray(model.encode_text(params, tokenizer.encode(texts, max_len)))
  zcls = z.reshape(len(class_names), len(templates), -1).mean(1)
  zcls /= np.linalg.norm(zcls, axis=-1, keepdims=True)
  generated = model.generate(params, zcls[None])
  zimg, _ = model.encode_image(params, batch_stats, np.stack(images)[None], generated, train=False)
  logits = np.asarray(zimg[0]) @ zcls.T  # [N, C]
  return np.argsort(-logits, axis=1)[:, :5]


@pytest.mark.parametrize("variant", ["hyperclip", "siglip"])
def test_zeroshot_on_tfds_cifar10_equals_a_hand_computation(variant):
  tfds = pytest.importorskip("tensorflow_datasets")
  from hyperclip_jax.data.sources.tfds import TfdsSource
  from hyperclip_jax.evaluators import classnames
  config = _tiny(variant, True, zeroshot_cifar10=dict(
      type="zeroshot", data=dict(name="tfds", dataset="cifar10", split="test"), classes="cifar10",
      templates="cifar", pp=PP, n_eval=11, batch_size=4))  # 4 + 4 + 3: a padded last batch
  model, params, batch_stats = _model(config)
  with tfds.testing.mock_data(num_examples=11):
    evaluator, tokenizer = _build(config, model)
    results = evaluator.run(params, batch_stats)
    source = TfdsSource("cifar10", split="test")
    fn = pp_lib.build(PP)
    images = [fn({"image": source[i]["image"]}, None)["image"] for i in range(11)]
    labels = np.asarray([source[i]["label"] for i in range(11)])
  r = results["cifar10"]
  assert r["num_classes"] == 10 and r["num_images"] == 11 and 0.0 <= r["top1"] <= r["top5"] <= 1.0
  names, _ = classnames.resolve("cifar10")
  top5 = _hand_topk(model, params, batch_stats, tokenizer, config.data.max_len, images, names,
                    classnames.templates("cifar"))
  assert len({tuple(t) for t in top5}) > 1  # the rankings differ between images: a check of per-image logits
  assert r["top1"] == pytest.approx((top5[:, 0] == labels).mean(), abs=1e-9)
  assert r["top5"] == pytest.approx((top5 == labels[:, None]).any(1).mean(), abs=1e-9)
  metrics = evaluator.flat_metrics(results)
  assert set(metrics) == {"zeroshot/cifar10/top1", "zeroshot/cifar10/top5"}


def test_zeroshot_on_a_labelled_manifest(tmp_path):
  (tmp_path / "classes.txt").write_text("red thing\ngreen thing\nblue thing\n")
  rows, colours = [], [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
  for i in range(7):
    Image.fromarray(np.full((40, 36, 3), colours[i % 3], np.uint8)).save(tmp_path / f"{i}.jpg")
    label = ["red thing", 1, "blue thing"][i % 3]  # class names or indices
    rows.append({"image": f"{i}.jpg", "label": label if i != 6 else "purple thing"})  # row 6: skipped
  (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  data = dict(name="manifest", manifest=str(tmp_path / "val.jsonl"))
  config = _tiny(bytes_tokens=True, zeroshot_colours=dict(type="zeroshot", data=data,
                                                          classes=str(tmp_path / "classes.txt"), batch_size=4))
  model, params, batch_stats = _model(config)
  evaluator, _ = _build(config, model)
  r = evaluator.run(params, batch_stats)["colours"]
  assert r["num_classes"] == 3 and r["num_images"] == 6 and 0.0 <= r["top1"] <= 1.0 and r["top5"] == 1.0
  config.evals.zeroshot_colours.workers = 2  # decoded by grain worker processes: the same metrics, exactly
  assert _build(config, model)[0].run(params, batch_stats)["colours"] == r


def test_trainer_runs_retrieval_and_linear_probe_every_eval_step(tmp_path):
  config = _tiny(retrieval_demo=dict(type="retrieval", data=dict(name="demo"), num_pairs=8, batch_size=8),
                 linear_probe_demo=dict(type="linear_probe", data=dict(name="demo", tasks="colour"), n_train=16,
                                        n_eval=8, batch_size=8))
  config.total_steps, config.eval_every_steps = 3, 2
  results = train.train(config, str(tmp_path))
  assert set(results) == {"retrieval/demo", "linear_probe/colour"}
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  evals = [r for r in rows if "linear_probe/colour/top1" in r]
  assert [r["step"] for r in evals] == [2, 3]  # periodic, then final
  for r in evals:
    assert 0.0 <= r["retrieval/demo/i2t_r1"] <= r["retrieval/demo/i2t_r5"] <= 1.0
    assert 0.0 <= r["linear_probe/colour/top1"] <= 1.0 and 0.0 <= r["retrieval/demo/t2i_r10"] <= 1.0
  with open(tmp_path / "final_eval.json") as f:
    assert json.load(f)["retrieval/demo"]["num_pairs"] == 8


def test_demo_task_entries_pick_those_tasks_with_the_images_of_the_full_set():
  config = _tiny()
  full = zeroshot.tasks_for(config, "zeroshot", evaluators.settings_of("zeroshot", dict(tasks="demo", n_eval=8))[1])
  picked = zeroshot.tasks_for(config, "zeroshot", evaluators.settings_of(
      "zeroshot", dict(tasks="demo:texture, demo:colour", n_eval=8))[1])
  assert [t.name for t in full] == list(demo.DEMO_TASK_NAMES)
  assert [t.name for t in picked] == ["texture", "colour"]
  by_name = {t.name: t for t in full}
  for task in picked:  # each task keeps its own image stream: the same images and labels as in the full set
    ref = by_name[task.name]
    assert tuple(task.class_names) == tuple(ref.class_names) and tuple(task.templates) == tuple(ref.templates)
    (images, labels), (ref_images, ref_labels) = next(iter(task.batches())), next(iter(ref.batches()))
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


@pytest.mark.parametrize("evals, message", [
    (dict(zeroshot_x=dict(type="zero_shot", tasks="demo")),
     "config.evals.zeroshot_x.type='zero_shot' is unknown; known: zeroshot, retrieval, linear_probe"),
    (dict(cifar=dict(tasks="cifar10")),
     "config.evals.cifar has no type; set config.evals.cifar.type to one of: zeroshot"),
    (dict(zeroshot=dict(tasks="demo", n_evals=3)), "config.evals.zeroshot.n_evals is unknown for type 'zeroshot'"),
    (dict(zeroshot=dict(tasks="imagenet21k")), "config.evals.zeroshot.tasks='imagenet21k' is unknown"),
    (dict(zeroshot=dict(tasks="demo:colur")), "config.evals.zeroshot.tasks: demo task 'colur' is unknown; known: "
     "colour, shape"),
    (dict(probe=dict(type="linear_probe", data=dict(name="tfds", datset="cifar10"))),
     "config.evals.probe.data.datset is unknown for name='tfds'; known: name, dataset"),
    (dict(retrieval=dict(data=dict(name="coco"))), "config.evals.retrieval.data.name='coco' is unknown"),
    (dict(zeroshot=dict(tasks="demo", batch_size=0)), "config.evals.zeroshot.batch_size=0 must be at least 1"),
])
def test_bad_evaluator_config_is_a_one_line_error_before_training(evals, message, tmp_path, capsys):
  config_file = tmp_path / "bad.py"
  config_file.write_text(
      "import ml_collections\nfrom hyperclip_jax.config import load_config\n"
      f"def get_config(arg=None):\n  c = load_config({DEMO + ':tiny=true'!r})\n"
      f"  c.evals = ml_collections.ConfigDict({evals!r})\n  return c\n")
  assert train.main(["--config", str(config_file), "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err
  assert not os.path.exists(tmp_path / "w")
