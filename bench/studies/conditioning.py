"""Set-dependence diagnostics of a trained run with a hypernetwork (bench/studies/reproduce.py's eval-only rows).

Does the generated Δ depend on the set of texts it reads, and does the image tower use that? Three measures,
each on the run's final checkpoint (image tower in eval mode, BatchNorm running averages):

  delta_std_ratio  Δ (the hypernetwork's output, every generated value) for K sets of set_size training captions:
                   RMS over values of (Δ - its mean over the K sets) / RMS of Δ. 0: the same Δ whatever the set
                   (`token` by construction); 1: Δ is all set-specific. None when Δ is exactly 0.
  inbatch          image->text top-1 within batches of held-out training pairs (a caption among the batch's
                   B captions), each group of set_size images given the Δ of: its own captions (`own`, as in
                   training), the next group's captions (`other`), the mean Δ over all groups (`mean`).
  zeroshot         demo zero-shot top-1 with the hypernet conditioned on: `wrong_task`, the class prompts of
                   ANOTHER demo task (the next one in demo.DEMO_TASK_NAMES order), scored against the task's own
                   classes; `train_sets_mean`, the Δ averaged over K sets of training captions (the same for
                   every task). The `classes` row (each task's own prompts) is the run's own final evaluation.

`recalibrated` is a fourth, eval-only row that also applies to siglip: zero-shot with each task's BatchNorm
statistics re-estimated under its Θ' on held-out training images (evaluators/recalibrate.py).

The zero-shot rows call evaluators.zeroshot.ZeroShotEvaluator with `condition_texts` or a `recalibrator`; nothing
here changes the library.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

DIAG_DATA_SEED = 999_983  # the training source at a seed no run trains on: held-out pairs for `inbatch`


def wrong_task(name: str, names: Sequence[str]) -> str:
  """The task whose class prompts condition `name` in the wrong_task row: the next one in `names`, cyclic."""
  i = list(names).index(name)
  return names[(i + 1) % len(names)]


def delta_std_ratio(generated: Any) -> float | None:
  """RMS of (Δ - mean over sets) / RMS of Δ, over every generated value; leaves [K, ...] (K sets)."""
  import jax
  flat = np.concatenate([np.asarray(leaf, np.float64).reshape(np.shape(leaf)[0], -1)
                         for leaf in jax.tree.leaves(generated)], axis=1)  # [K, N]
  total = float(np.sqrt(np.mean(flat ** 2)))
  if total == 0.0:
    return None
  return float(np.sqrt(np.mean((flat - flat.mean(0, keepdims=True)) ** 2)) / total)


def training_captions(config: Any, n: int, seed: int = 0) -> list[str]:
  """The first n captions of the training source at `seed`."""
  from hyperclip_jax.data import sources
  source = sources.get_source(config.data, seed)
  return [source[i]["caption"] for i in range(n)]


def diagnose(workdir: str, task_names: Sequence[str], n_eval: int, sets: int, inbatch_batches: int
             ) -> dict[str, Any]:
  """The three measures of the run in `workdir` (module docstring), on the zero-shot tasks `task_names`."""
  import jax

  from hyperclip_jax import sharding
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.data import input_pipeline, sources, tokenizers
  from hyperclip_jax.data.sources import demo
  from hyperclip_jax.evaluators import zeroshot
  from hyperclip_jax.models import two_towers

  config = workdir_lib.read_config(workdir)
  run = workdir_lib.load_run(workdir, None, config)
  params, batch_stats = run.params, run.batch_stats
  model = two_towers.build_model(config)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  mesh = sharding.make_mesh(config.mesh)
  size, max_len, set_size = config.data.image_size, config.data.max_len, config.model.hyper.set_size
  encode_text = jax.jit(model.encode_text)
  generate = jax.jit(model.generate)

  # Δ over K sets of training captions
  captions = training_captions(config, sets * set_size)
  ztxt = encode_text(params, tokenizer.encode(captions, max_len))
  ratio = delta_std_ratio(generate(params, ztxt.reshape(sets, set_size, -1)))

  # in-batch image->text top-1 with the own / another group's / the mean Δ
  @jax.jit
  def inbatch_hits(params, batch_stats, images, tokens):
    zt = model.encode_text(params, tokens)  # [B, D]
    g = zt.shape[0] // set_size
    own = model.generate(params, zt.reshape(g, set_size, -1))
    conditions = {"own": own, "other": jax.tree.map(lambda x: jax.numpy.roll(x, 1, axis=0), own),
                  "mean": jax.tree.map(lambda x: x.mean(0, keepdims=True), own)}
    grouped = images.reshape((g, set_size) + images.shape[1:])
    hits = {}
    for name, gen in conditions.items():
      zi, _ = model.encode_image(params, batch_stats, grouped, gen, train=False)
      logits = zi.reshape(zt.shape[0], -1) @ zt.T
      hits[name] = (logits.argmax(1) == jax.numpy.arange(zt.shape[0])).sum()
    return hits

  source = sources.get_source(config.data, DIAG_DATA_SEED)
  b = config.batch_size
  totals = {"own": 0, "other": 0, "mean": 0}
  for k in range(inbatch_batches):
    examples = [source[i] for i in range(k * b, (k + 1) * b)]
    images = input_pipeline.to_model_image(np.stack([e["image"] for e in examples]))
    tokens = tokenizer.encode([e["caption"] for e in examples], max_len)
    for name, h in inbatch_hits(params, batch_stats, images, tokens).items():
      totals[name] += int(h)
  inbatch = {name: h / (b * inbatch_batches) for name, h in totals.items()}

  # zero-shot conditioned on another task's class prompts / on the mean Δ of training sets
  every = demo.demo_tasks(size, n_eval, object_scale=config.data.get("object_scale", 1.0))
  eval_batch = config.evals.zeroshot.get("batch_size", 128)
  tasks = [zeroshot.ClassificationTask(t, every[t].class_names, every[t].templates,
                                       functools.partial(input_pipeline.make_eval_batches, every[t], eval_batch))
           for t in task_names]
  evaluator = zeroshot.ZeroShotEvaluator(model, tokenizer, tasks, max_len, mesh, condition_texts=["-"])
  wrong = {}
  for task in tasks:  # one evaluator (one set of compiled programs), its conditioning texts set per task
    other = every[wrong_task(task.name, demo.DEMO_TASK_NAMES)]
    evaluator.condition_texts = [p for row in other.prompts() for p in row]
    wrong[task.name] = evaluator.run_task(params, batch_stats, task)["top1"]
  mean_sets = zeroshot.ZeroShotEvaluator(model, tokenizer, tasks, max_len, mesh, condition_texts=captions,
                                         condition_sets=sets).run(params, batch_stats)
  return {"delta_std_ratio": ratio, "inbatch": inbatch,
          "zeroshot": {"wrong_task": wrong, "train_sets_mean": {t: r["top1"] for t, r in mean_sets.items()}},
          "wrong_task_of": {t.name: wrong_task(t.name, demo.DEMO_TASK_NAMES) for t in tasks}}


def recalibrated(workdir: str, task_names: Sequence[str], n_eval: int, n: int) -> dict[str, float]:
  """Zero-shot top-1 per task of the run in `workdir`, each task's BatchNorm statistics re-estimated under its own
  Θ' (conditioned on its class prompts) over n held-out training images (evaluators/recalibrate.py)."""
  from hyperclip_jax import sharding
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.data import input_pipeline, tokenizers
  from hyperclip_jax.data.sources import demo
  from hyperclip_jax.evaluators import recalibrate, zeroshot
  from hyperclip_jax.models import two_towers

  config = workdir_lib.read_config(workdir)
  run = workdir_lib.load_run(workdir, None, config)
  model = two_towers.build_model(config)
  mesh = sharding.make_mesh(config.mesh)
  every = demo.demo_tasks(config.data.image_size, n_eval, object_scale=config.data.get("object_scale", 1.0))
  eval_batch = config.evals.zeroshot.get("batch_size", 128)
  tasks = [zeroshot.ClassificationTask(t, every[t].class_names, every[t].templates,
                                       functools.partial(input_pipeline.make_eval_batches, every[t], eval_batch))
           for t in task_names]
  evaluator = zeroshot.ZeroShotEvaluator(model, tokenizers.get_tokenizer(config.data.tokenizer), tasks,
                                         config.data.max_len, mesh,
                                         recalibrator=recalibrate.build(config, model, mesh, n, eval_batch))
  results = evaluator.run(run.params, run.batch_stats)
  return {t.name: results[evaluator.result_name(t.name)]["top1"] for t in tasks}
