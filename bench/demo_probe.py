"""Probes for the demo's open item (shape and texture stay at chance in zero-shot): what can the encoder learn?

  python bench/demo_probe.py supervised --attribute shape --steps 150 [--width 0.25 --depth 0.34]
      [--radius-small 0.105 --radius-large 0.21]
  python bench/demo_probe.py caption-swap --workdir runs/demo [--n 96]
  python bench/demo_probe.py prompts --workdir runs/demo [--n 512]
  python bench/demo_probe.py condition --workdir runs/demo [--n 512] [--sets 64]
  python bench/demo_probe.py confusion --workdir runs/demo [--task texture] [--n 384]

`supervised` trains the demo config's image tower (siglip variant: plain BatchNorm affine, grouped BN
statistics as in training) with a linear softmax head on one attribute's labels, batch 128 in groups of 16, Adam
2e-3, and prints the running train accuracy: how fast the encoder learns the attribute when every sample
names it. `caption-swap` loads a trained run and, for eval images of large objects, scores the full
caption against the same caption with one attribute swapped: whether the towers separate that attribute at all,
independently of the zero-shot prompt templates. `prompts` scores the zero-shot tasks of a trained run with the
tasks' own templates ("a photo of a circle.") and with templates that name the other attributes too, averaged
over their values ("a red {} ...", each colour once: a prompt ensemble shaped like the training captions).
`condition` scores every zero-shot task of a trained hyperclip run under several choices of the norm params
the hypernet generates at test time: from the task's class set (the default), from the first set_size training
captions, from both sets' union, the mean of the params of `--sets` random training-caption sets, and none
(Δ = 0: the encoder's own γ, β, which the residual mode keeps): which test-time set the tower works best with.
`confusion` gives, for one zero-shot task of a trained run, the confusion matrix (rows: true class), the cosines
between the class prompt embeddings (where the text side cannot tell two classes apart) and the
nearest-class-centroid top-1 of the image embeddings alone (the image side). One JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import optim
from hyperclip_jax import sharding
from hyperclip_jax import train as train_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.data.input_pipeline import to_model_image
from hyperclip_jax.data.sources import demo
from hyperclip_jax.models import two_towers

VALUES = {"shape": demo.SHAPES, "texture": demo.TEXTURES, "colour": tuple(demo.COLOURS),
          "position": demo.POSITIONS, "size": demo.SIZES}


def supervised(args: argparse.Namespace) -> None:
  config = config_lib.load_config("configs/demo.py:variant=siglip")
  config.model.image.width_mult, config.model.image.depth_mult = args.width, args.depth
  model = two_towers.build_model(config)
  size, batch, group = config.data.image_size, 128, 16
  values = VALUES[args.attribute]
  radius = dict(demo._RADIUS)  # pylint: disable=protected-access
  demo._RADIUS.update(small=args.radius_small, large=args.radius_large)  # pylint: disable=protected-access
  source = demo.DemoSource(size, seed=0, two_objects_prob=0.0)
  variables = model.init(jax.random.PRNGKey(0))
  params = {"img": variables["params"]["img"], "w": jnp.zeros((model.embed_dim, len(values)))}
  tx = optax.adam(2e-3)
  opt_state = tx.init(params)

  def loss_fn(p, batch_stats, images, labels):
    z, batch_stats = model.encode_image({"img": p["img"]}, batch_stats,
                                        images.reshape((batch // group, group) + images.shape[1:]), train=True)
    logits = 10.0 * z.reshape(batch, -1) @ p["w"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (batch_stats, (logits.argmax(-1) == labels).mean())

  @jax.jit
  def step(p, opt_state, batch_stats, images, labels):
    (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch_stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, batch_stats, loss, acc

  batch_stats, accs = variables["batch_stats"], []
  for s in range(args.steps):
    samples = [source.sample(s * batch + i) for i in range(batch)]
    images = np.stack([to_model_image(im) for im, _ in samples])
    labels = np.asarray([values.index(getattr(sc.objects[0], args.attribute)) for _, sc in samples])
    params, opt_state, batch_stats, _, acc = step(params, opt_state, batch_stats, images, labels)
    accs.append(float(acc))
  demo._RADIUS.update(radius)  # pylint: disable=protected-access
  print(json.dumps({"name": f"supervised/{args.attribute}/train_acc_last25", "value": round(float(np.mean(accs[-25:])), 4),
                    "chance": round(1 / len(values), 4), "steps": args.steps, "width": args.width,
                    "depth": args.depth, "radius": [args.radius_small, args.radius_large],
                    "command": " ".join(sys.argv)}))


def caption_swap(args: argparse.Namespace) -> None:
  with open(f"{args.workdir}/config.json", encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  mesh = sharding.make_mesh(config.mesh)
  model = two_towers.build_model(config)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))["params"]
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, shapes)
  state = train_lib.init_state(model, tx, jax.random.PRNGKey(0), mesh, config.mesh.get("param_rules", ((".*", "replicated"),)))
  checkpointer = ckpt_lib.Checkpointer(args.workdir, keep=config.keep_checkpoints)
  step = checkpointer.latest_step()
  if step is None:
    raise SystemExit(f"demo_probe: no checkpoint in {args.workdir}; train one first (make demo)")
  state, _ = checkpointer.restore(step, ckpt_lib.abstract_like(state))
  params, batch_stats = state["params"], state["batch_stats"]
  source = demo.DemoSource(config.data.image_size, 999, two_objects_prob=0.0, partial_caption_prob=0.0, stream=7)

  def caption(obj: demo.DemoObject, **changed: str) -> str:
    a = {k: getattr(obj, k) for k in demo.ATTRIBUTES} | changed
    texture = "" if a["texture"] == "solid" else a["texture"] + " "
    return f"a {a['size']} {a['colour']} {texture}{a['shape']} {demo.SYNONYMS['position'][a['position']][0]}"

  for attribute in ("shape", "texture", "colour", "position"):
    values, hits = VALUES[attribute], 0
    for i in range(args.n):
      image, scene = source.sample(i, size="large")
      obj = scene.objects[0]
      texts = [caption(obj, **{attribute: v}) for v in values]
      ztxt = model.encode_text(params, jnp.asarray(tokenizer.encode(texts, config.data.max_len)))
      generated = model.generate(params, ztxt[None])
      zimg, _ = model.encode_image(params, batch_stats, jnp.asarray(to_model_image(image))[None, None], generated)
      hits += values[int(jnp.argmax(zimg[0, 0] @ ztxt.T))] == getattr(obj, attribute)
    print(json.dumps({"name": f"caption_swap/{attribute}/top1", "value": round(hits / args.n, 4),
                      "chance": round(1 / len(values), 4), "workdir": args.workdir, "step": step,
                      "command": " ".join(sys.argv)}))
  checkpointer.close()


def marginal_templates(attribute: str) -> tuple[str, ...]:
  """Caption-shaped templates for `attribute` that name the other object attributes, one per value combination."""
  colours, shapes = tuple(demo.COLOURS), demo.SHAPES
  if attribute == "shape":
    return tuple(f"a {size} {colour} {{}}." for size in demo.SIZES for colour in colours)
  if attribute == "texture":
    return tuple(f"a {colour} {{}} {shape}." for colour in colours for shape in shapes)
  if attribute == "colour":
    return tuple(f"a {size} {{}} {shape}." for size in demo.SIZES for shape in shapes)
  raise SystemExit(f"demo_probe prompts: no marginal templates for {attribute!r}")


def prompts(args: argparse.Namespace) -> None:
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.data import input_pipeline
  from hyperclip_jax.evaluators import zeroshot
  run = workdir_lib.load_run(args.workdir)
  config = run.config
  model = two_towers.build_model(config)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  tasks = demo.demo_tasks(config.data.image_size, args.n, object_scale=config.data.get("object_scale", 1.0))
  mesh = sharding.make_mesh(config.mesh)
  for name in ("colour", "shape", "texture"):
    t = tasks[name]
    batches = lambda t=t: input_pipeline.make_eval_batches(t, 128)
    for kind, templates in (("task", t.templates), ("marginal", marginal_templates(name))):
      ev = zeroshot.ZeroShotEvaluator(model, tokenizer, [zeroshot.ClassificationTask(name, t.class_names, templates,
                                                                                     batches)],
                                      config.data.max_len, mesh)
      r = ev.run(run.params, run.batch_stats)[name]
      print(json.dumps({"name": f"prompts/{name}/{kind}/top1", "value": round(r["top1"], 4),
                        "chance": round(r["chance"], 4), "templates": len(templates), "workdir": args.workdir,
                        "step": run.step, "command": " ".join(sys.argv)}), flush=True)


def _image_embeddings(ev, run, mesh, task, generated) -> tuple[np.ndarray, np.ndarray]:
  """Image embeddings [N, D] of a demo task's eval images under the `generated` norm params, and their labels."""
  from hyperclip_jax.data import input_pipeline
  zs, ls = [], []
  for images, labels in input_pipeline.make_eval_batches(task, 128):
    b = images.shape[0]
    pad = (-b) % mesh.size
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    images = jax.device_put(images, sharding.batch_sharding(mesh))
    embed = ev._embed_images  # pylint: disable=protected-access
    zs.append(np.asarray(embed(run.params, run.batch_stats, images, generated))[:b])
    ls.append(labels)
  return np.concatenate(zs), np.concatenate(ls)


def confusion(args: argparse.Namespace) -> None:
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.evaluators import zeroshot
  run = workdir_lib.load_run(args.workdir)
  config = run.config
  model = two_towers.build_model(config)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  task = demo.demo_tasks(config.data.image_size, args.n, object_scale=config.data.get("object_scale", 1.0))[args.task]
  mesh = sharding.make_mesh(config.mesh)
  ev = zeroshot.ZeroShotEvaluator(model, tokenizer, [], config.data.max_len, mesh)
  zcls = np.asarray(ev.class_embeddings(run.params, task.class_names, task.templates))
  generated = model.generate(run.params, jnp.asarray(zcls)[None])  # None for siglip
  zimg, labels = _image_embeddings(ev, run, mesh, task, generated)
  c = len(task.class_names)
  matrix = np.zeros((c, c), int)
  np.add.at(matrix, (labels, (zimg @ zcls.T).argmax(1)), 1)
  half = len(labels) // 2  # image side alone: class centroids of the first half, nearest centroid on the second
  centroids = np.stack([zimg[:half][labels[:half] == k].mean(0) for k in range(c)])
  centroid_top1 = float(((zimg[half:] @ centroids.T).argmax(1) == labels[half:]).mean())
  common = {"task": args.task, "classes": list(task.class_names), "workdir": args.workdir, "step": run.step,
            "command": " ".join(sys.argv)}
  for name, value in (("zeroshot_confusion", matrix.tolist()),
                      ("class_prompt_cosine", np.round((zcls @ zcls.T).astype(np.float64), 4).tolist()),
                      ("image_centroid_top1", round(centroid_top1, 4))):
    print(json.dumps({"name": f"confusion/{args.task}/{name}", "value": value, **common}), flush=True)


def condition(args: argparse.Namespace) -> None:
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.data import sources
  from hyperclip_jax.evaluators import zeroshot
  run = workdir_lib.load_run(args.workdir)
  config = run.config
  model = two_towers.build_model(config)
  if model.hyper is None or config.model.variant != "hyperclip":
    raise SystemExit(f"demo_probe condition: {args.workdir} is a {config.model.variant} run; it needs hyperclip")
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  tasks = demo.demo_tasks(config.data.image_size, args.n, object_scale=config.data.get("object_scale", 1.0))
  mesh = sharding.make_mesh(config.mesh)
  ev = zeroshot.ZeroShotEvaluator(model, tokenizer, [], config.data.max_len, mesh)
  source = sources.get_source(config.data, 0)
  k = model.set_size
  captions = [source[i]["caption"] for i in range(k * (args.sets + 1))]

  def embed(texts):
    return ev.class_embeddings(run.params, texts, ["{}"])  # [N, D]
  train_set = embed(captions[:k])
  many = embed(captions[k:]).reshape(args.sets, k, -1)
  mean_generated = model.generate_mean(run.params, many)
  for name, task in tasks.items():
    zcls = ev.class_embeddings(run.params, task.class_names, task.templates)
    choices = {
        "classes": model.generate(run.params, zcls[None]),
        "train_captions": model.generate(run.params, train_set[None]),
        "union": model.generate(run.params, jnp.concatenate([zcls, train_set])[None]),
        "mean_of_sets": mean_generated,
        "none": jax.tree.map(jnp.zeros_like, mean_generated),
    }
    for kind, generated in choices.items():
      zimg, labels = _image_embeddings(ev, run, mesh, task, generated)
      hits, n = int(((zimg @ np.asarray(zcls).T).argmax(1) == labels).sum()), len(labels)
      print(json.dumps({"name": f"condition/{name}/{kind}/top1", "value": round(hits / n, 4),
                        "chance": round(1 / len(task.class_names), 4), "workdir": args.workdir, "step": run.step,
                        "command": " ".join(sys.argv)}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("supervised")
  p.add_argument("--attribute", choices=sorted(VALUES), default="shape")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--depth", type=float, default=0.34)
  p.add_argument("--radius-small", type=float, default=0.105)
  p.add_argument("--radius-large", type=float, default=0.21)
  p = sub.add_parser("caption-swap")
  p.add_argument("--workdir", required=True)
  p.add_argument("--n", type=int, default=96)
  p = sub.add_parser("prompts")
  p.add_argument("--workdir", required=True)
  p.add_argument("--n", type=int, default=512)
  p = sub.add_parser("condition")
  p.add_argument("--workdir", required=True)
  p.add_argument("--n", type=int, default=512)
  p.add_argument("--sets", type=int, default=64)
  p = sub.add_parser("confusion")
  p.add_argument("--workdir", required=True)
  p.add_argument("--task", choices=demo.DEMO_TASK_NAMES, default="texture")
  p.add_argument("--n", type=int, default=384)
  args = parser.parse_args()
  {"supervised": supervised, "caption-swap": caption_swap, "prompts": prompts, "condition": condition,
   "confusion": confusion}[args.cmd](args)


if __name__ == "__main__":
  main()
