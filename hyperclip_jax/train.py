"""hyperclip-train: the one trainer for every variant (siglip, hyperclip, token).

  hyperclip-train --config configs/demo.py[:variant=siglip] --workdir runs/demo [--config.a.b=value ...]

Rerunning the same command on the same workdir resumes from the newest checkpoint, bit-exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import evaluators
from hyperclip_jax import losses
from hyperclip_jax import metrics as metrics_lib
from hyperclip_jax import optim
from hyperclip_jax import sharding
from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

State = dict[str, Any]


def make_train_step(model: two_towers.TwoTowers, tx: optax.GradientTransformation, loss_name: str,
                    schedule: Callable[[Any], Any]) -> Callable[[State, dict[str, jax.Array], jax.Array],
                                                                tuple[State, dict[str, jax.Array]]]:
  """The pure train step: forward all three parts, loss over all B x B pairs, one optax update."""
  loss_fn = losses.get_loss(loss_name)

  def step_fn(state: State, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    step_rng = jax.random.fold_in(rng, state["step"])

    def objective(params):
      zimg, ztxt, batch_stats = model(params, state["batch_stats"], batch["image"], batch["text"], train=True,
                                      rng=step_rng)
      loss = loss_fn(zimg, ztxt, params["t"], params["b"])  # softmax-CLIP ignores the bias
      return loss, (batch_stats, zimg, ztxt)

    (loss, (batch_stats, zimg, ztxt)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "batch_stats": batch_stats}
    metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
               "train/t": jnp.exp(params["t"]), "train/b": params["b"], "train/lr": schedule(state["step"]),
               "train/i2t_acc": losses.contrastive_accuracy(zimg, ztxt)}
    return new_state, metrics

  return step_fn


def init_state(model: two_towers.TwoTowers, tx: optax.GradientTransformation, rng: jax.Array,
               mesh: jax.sharding.Mesh) -> State:
  """Creates the train state already placed on the mesh (never a bare jit(tx.init): it lands on one device)."""
  def make(rng):
    variables = model.init(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
            "opt_state": tx.init(variables["params"]), "batch_stats": variables["batch_stats"]}
  return jax.jit(make, out_shardings=sharding.replicated(mesh))(rng)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation {task: {top1, chance, ...}}."""
  config_lib.validate(config, jax.device_count())
  is_main = jax.process_index() == 0
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  try:  # the builders check their own config values; their ValueErrors are config errors
    mesh = sharding.make_mesh(config.mesh)
    model = two_towers.build_model(config)
    tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    param_shapes = jax.eval_shape(model.init, init_rng)["params"]
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps, param_shapes)
    evaluator = evaluators.build(config, model, tokenizer, mesh)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  os.makedirs(workdir, exist_ok=True)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  signature = config_lib.model_signature(config)
  latest = checkpointer.latest_step()
  if latest is not None:  # before anything is written: a mismatched workdir stays untouched
    checkpointer.check_compatible(latest, signature)

  state = init_state(model, tx, init_rng, mesh)
  data_iter = input_pipeline.make_train_iterator(
      config.data, tokenizer, config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  if latest is not None:
    state, data_state = checkpointer.restore(latest, ckpt_lib.abstract_like(state))
    try:
      data_iter.set_state(data_state)
    except ValueError as e:  # e.g. another global batch size
      raise ckpt_lib.CheckpointError(
          f"checkpoint step {latest} cannot resume this run's data stream: {e}; use a new --workdir or the "
          "config that wrote it") from e
    print(f"resumed from step {latest} ({checkpointer.directory})", file=sys.stderr, flush=True)
  if is_main:  # only once the workdir is known to be ours
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config_lib.to_json(config))

  repl = sharding.replicated(mesh)
  train_step = jax.jit(make_train_step(model, tx, config.loss.name, schedule), donate_argnums=(0,),
                       out_shardings=(repl, repl))
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  progress = metrics_lib.Progress(config.total_steps, config.batch_size, enabled=is_main)

  step = int(jax.device_get(state["step"]))
  first_step, last_save = step, time.monotonic()
  progress.start(step)
  while step < config.total_steps:
    batch = sharding.put_batch({k: v for k, v in next(data_iter).items() if k in ("image", "text")}, mesh)
    state, metrics = train_step(state, batch, train_rng)
    step += 1
    if step == first_step + 1:  # throughput excludes the compile of the first step
      jax.block_until_ready(metrics)
      progress.start(step)
    last = step == config.total_steps
    if step % config.log_every_steps == 0 or last:
      metrics = jax.device_get(metrics)
      metrics["perf/images_per_sec"] = progress.images_per_sec(step)
      writer.write(step, metrics)
      progress.update(step, float(metrics["train/loss"]))
    due = step % config.checkpoint_every_steps == 0 or (
        config.checkpoint_every_secs and time.monotonic() - last_save >= config.checkpoint_every_secs)
    if jax.process_count() > 1:  # every process must take the same decision: Orbax saves collectively
      due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
    if due or last:
      checkpointer.save(step, state, data_iter.get_state(), signature)
      last_save = time.monotonic()
    if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
      writer.write(step, evaluator.flat_metrics(evaluator.run(state["params"], state["batch_stats"])))
      progress.start(step)  # evaluation time is not training throughput

  checkpointer.close()
  data_iter.close()
  results = evaluator.run(state["params"], state["batch_stats"])
  final = {"params_checksum": ckpt_lib.tree_checksum(state["params"]), **evaluator.flat_metrics(results)}
  writer.write(step, final)
  writer.close()
  if is_main:
    with open(os.path.join(workdir, "final_eval.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    print(evaluators.format_table(results), flush=True)
    print(f"checkpoints: {checkpointer.directory}\nmetrics:     {os.path.join(workdir, 'metrics.jsonl')}"
          f"\nfinal eval:  {os.path.join(workdir, 'final_eval.json')}", flush=True)
  return results


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(prog="hyperclip-train", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="config file, e.g. configs/demo.py:variant=siglip")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics); rerun to resume")
  args = parser.parse_args(rest)
  config = config_lib.load_config(args.config)
  for key, value in overrides:
    config_lib.apply_override(config, key, value)
  return config, args.workdir


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    config, workdir = parse_args(argv)
    train(config, workdir)
  except (config_lib.ConfigError, ckpt_lib.CheckpointError) as e:
    print(f"hyperclip-train: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
