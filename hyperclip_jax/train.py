"""hyperclip-train: the one trainer for every variant (siglip, hyperclip, token).

  hyperclip-train --config configs/demo.py[:variant=siglip] --workdir runs/demo [--config.a.b=value ...]

Rerunning the same command on the same workdir resumes from the newest checkpoint, bit-exactly.
"""
from __future__ import annotations

import argparse
import contextlib
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

from hyperclip_jax import accumulate, distributed, evaluators, guards, losses, optim, perf, sharding, validation
from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import metrics as metrics_lib
from hyperclip_jax import state as state_lib
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.data import input_pipeline, pixels, tokenizers
from hyperclip_jax.models import two_towers

State = state_lib.State


MODEL_KEYS = ("image", "text", "positive_id")  # what the train step reads of a host batch (positive_id: when
# config.data.task_sets > 0, multi-positive rows; data/sources/demo_task_sets.py)


def make_train_step(model: two_towers.TwoTowers, tx: optax.GradientTransformation, loss_name: str,
                    schedule: Callable[[Any], Any], *, mesh: jax.sharding.Mesh | None = None,
                    chunked_loss: bool = False, accum_steps: int = 1, guard_nonfinite: bool = False,
                    keep_on_nonfinite: bool = False, pixel_affine: pixels.PixelAffine = pixels.DEFAULT,
                    loss_scope: str = "batch") -> Callable[[State, dict[str, jax.Array], jax.Array], tuple[State, dict[str, jax.Array]]]:
  """The pure train step: forward all three parts, loss over all B x B pairs (loss_scope='batch') or each
  group's set_size x set_size block ('group', losses.group_loss), one optax update.

  chunked_loss: the ring form of the sigmoid loss over `mesh`; accum_steps > 1: GradCache micro-batches
  (same loss and gradients as the full batch, see accumulate.py). guard_nonfinite: the step returns a third
  value, {'finite': bool, 'grads': bool [n_params], 'params': bool [n_params]} (per leaf in tree order), telling
  whether loss, gradients and updated params are all finite. keep_on_nonfinite: such a step also leaves the state
  as it was (but for `step`) — for skip_nonfinite_steps only, since selecting between the old and the new state
  keeps both alive (twice the state's memory); a run that stops on the first non-finite step needs no select:
  it never saves the bad state. pixel_affine: turns uint8 batch images into model inputs (data/pixels.py);
  float32 images pass through.
  """
  loss_fn = losses.get_loss(loss_name, chunked=chunked_loss, mesh=mesh, scope=loss_scope,
                            set_size=model.set_size)  # softmax-CLIP ignores the bias
  loss_and_grads = accumulate.make_loss_and_grads(model, loss_fn, accum_steps, mesh)

  def step_fn(state: State, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    step_rng = jax.random.fold_in(rng, state["step"])
    batch = {**batch, "image": pixel_affine.apply(batch["image"])}
    loss, grads, batch_stats, zimg, ztxt = loss_and_grads(state["params"], state["batch_stats"], batch, step_rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "batch_stats": batch_stats}
    metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
               "train/t": jnp.exp(params["t"]), "train/b": params["b"], "train/lr": schedule(state["step"]),
               "train/i2t_acc": losses.contrastive_accuracy(zimg, ztxt, batch.get("positive_id"))}
    if not guard_nonfinite:
      return new_state, metrics
    grads_ok, params_ok = guards.leaf_finite(grads), guards.leaf_finite(params)
    finite = jnp.isfinite(loss) & jnp.all(grads_ok) & jnp.all(params_ok)
    health = {"finite": finite, "grads": grads_ok, "params": params_ok}
    if not keep_on_nonfinite:
      return new_state, metrics, health
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    kept["step"] = new_state["step"]  # the batch was consumed either way
    return kept, metrics, health

  return step_fn


def itstime(step: int, every: int, last: bool = False) -> bool:
  """Whether a periodic action (log, save, evaluate) is due after `step` steps; every = 0: never (but at the
  last step when `last`)."""
  return last or (every > 0 and step % every == 0)


# Trainer keys a config file may leave out (configs written before they existed): filled in once, at start.
TRAIN_DEFAULTS = {"resume": "auto", "skip_nonfinite_steps": False,
                  "profile": {"first_step": 0, "num_steps": 0}}


def _with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy: the caller's config is not changed
  for key, value in TRAIN_DEFAULTS.items():
    if key not in config:
      config[key] = value
  if "allow_fewer_devices" not in config.distributed:
    config.distributed.allow_fewer_devices = False
  return config


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation {task: {top1, chance, ...}}.

  Raises guards.Preempted after SIGTERM (a checkpoint was saved: rerun to continue), guards.WorkdirBusy when
  another trainer holds `workdir`, guards.NonFiniteError on a NaN/Inf step (unless skip_nonfinite_steps).
  """
  with contextlib.ExitStack() as cleanup:  # lock, SIGTERM handler, checkpointer, data: released on every exit
    return _train(_with_defaults(config), workdir, cleanup)


def _train(config: ml_collections.ConfigDict, workdir: str, cleanup: contextlib.ExitStack) -> dict[str, Any]:
  dist_settings = distributed.initialize(config.distributed)  # before anything touches a device
  distributed.check_local_devices(config.distributed.allow_fewer_devices)
  validation.validate(config, jax.device_count())
  is_main = jax.process_index() == 0
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  try:  # the builders check their own config values; their ValueErrors are config errors
    mesh = sharding.make_mesh(config.mesh)
    model = two_towers.build_model(config)
    tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    variables = jax.eval_shape(model.init, init_rng)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps, variables["params"])
    evaluator = evaluators.build(config, model, tokenizer, mesh)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  topology = distributed.topology(mesh, dist_settings)
  print(distributed.banner(topology), file=sys.stderr, flush=True)
  workdir_lib.create(workdir)  # a local directory, or a gs:// (etils.epath) URI
  cleanup.enter_context(guards.WorkdirLock(workdir, enabled=is_main))  # before anything in it is touched
  watch = cleanup.enter_context(guards.PreemptionWatch())

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints, owner=True)
  cleanup.callback(checkpointer.close)  # an error stops the run only once in-flight saves are finished
  signature = config_lib.model_signature(config)
  abstract = state_lib.abstract_state(variables, tx, mesh, config.mesh.param_rules)
  sharding.print_param_table(abstract["params"])
  try:  # e.g. a shard pattern that matches nothing: a config problem, said in one line
    data_iter = input_pipeline.make_train_iterator(
        config.data, tokenizer, config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), set_size=config.model.hyper.set_size)
    pixel_affine = input_pipeline.train_pixel_affine(config.data)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  cleanup.callback(data_iter.close)
  # Before anything is written: a mismatched workdir stays untouched; a damaged newest step falls back.
  restored = checkpointer.restore_latest(abstract, signature, fresh=config.resume == "fresh")
  run_info = {}
  if restored is None:
    state = state_lib.init_state(model, tx, init_rng, mesh, config.mesh.param_rules, abstract)
  else:
    latest, state, data_state, run_info = restored
    try:
      data_iter.set_state(data_state)
    except ValueError as e:  # e.g. another global batch size
      raise ckpt_lib.CheckpointError(
          f"checkpoint step {latest} cannot resume this run's data stream: {e}; use a new --workdir or the "
          "config that wrote it") from e
    print(f"resumed from step {latest} ({checkpointer.directory})", file=sys.stderr, flush=True)
  step = int(jax.device_get(state["step"]))
  if is_main:  # only once the workdir is known to be ours
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))
    workdir_lib.write_text(workdir, "run_info.json",
                           json.dumps({"start_step": step, "topology": topology}, indent=2, sort_keys=True))

  repl = sharding.replicated(mesh)
  step_fn = make_train_step(model, tx, config.loss.name, schedule, mesh=mesh, chunked_loss=config.loss.chunked,
                            accum_steps=config.accum_steps, guard_nonfinite=True,
                            keep_on_nonfinite=config.skip_nonfinite_steps, pixel_affine=pixel_affine,
                            loss_scope=config.loss.get("scope", "batch"))
  train_step = jax.jit(step_fn, donate_argnums=(0,),
                       out_shardings=(jax.tree.map(lambda x: x.sharding, state), repl, repl))
  param_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["params"])]
  health = guards.StepHealth(config.skip_nonfinite_steps, param_paths, int(run_info.get("skipped_nonfinite", 0)))
  health.last_saved_step = restored[0] if restored is not None else None
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  cleanup.callback(writer.close)
  progress = metrics_lib.Progress(config.total_steps, config.batch_size, enabled=is_main)
  profile = perf.ProfileWindow(workdir, config.profile.first_step, config.profile.num_steps, enabled=is_main)
  cleanup.callback(profile.stop)
  timer = None  # perf.StepTimer, made once the first batch gives the step's FLOP count

  # The loop never synchronises processes outside the jitted step: step-count decisions are the same on every
  # process, the time-based checkpoint is agreed at log steps (where the host waits for metrics anyway), and
  # preemption comes through JAX's preemption sync point, which every process reaches at the same step.
  first_step, last_save_time, stop = step, time.monotonic(), False
  while step < config.total_steps:
    profile.at_step(step, state["step"])
    wait = timer.waiting_for_data() if timer else contextlib.nullcontext()
    with wait:
      host_batch = next(data_iter)
      batch = sharding.put_batch({k: v for k, v in host_batch.items() if k in MODEL_KEYS}, mesh)
    if timer is None:
      timer = perf.StepTimer(config.batch_size, jax.device_count(),
                             perf.step_flops(train_step, state, batch, train_rng), topology["device_kind"])
      if timer.mfu_reason and is_main:
        print(f"perf/mfu: not computed ({timer.mfu_reason})", file=sys.stderr, flush=True)
      if jax.process_count() > 1:  # compile before the first collective: gloo gives processes 30 s to meet
        train_step.lower(state, batch, train_rng).compile()
        distributed.barrier("train_step")
    state, metrics, step_health = train_step(state, batch, train_rng)
    step += 1
    health.push(step, step_health, metrics["train/loss"], host_batch)
    if step == first_step + 1:  # throughput excludes the compile of the first step
      jax.block_until_ready(metrics)
      progress.start(step)
      timer.reset(step)
    last = step == config.total_steps
    time_due = False
    if itstime(step, config.log_every_steps, last):
      health.flush()
      metrics = jax.device_get(metrics)
      if config.skip_nonfinite_steps:
        metrics["train/nonfinite_skipped"] = health.skipped
      if "index" in host_batch:  # stream positions of this host's rows: resumes neither lose nor repeat any
        index = host_batch["index"]
        metrics["data/index_min"], metrics["data/index_max"] = int(index.min()), int(index.max())
      metrics["perf/images_per_sec"] = progress.images_per_sec(step)
      metrics.update(timer.window(step))
      metrics.update(data_iter.metrics())  # data/skipped/<reason> (real-data sources)
      writer.write(step, metrics)
      progress.update(step, float(metrics["train/loss"]))
      time_due = _agree(bool(config.checkpoint_every_secs) and
                        time.monotonic() - last_save_time >= config.checkpoint_every_secs)
    stop = watch.requested(step)  # SIGTERM / preemption: save now, then exit
    if itstime(step, config.checkpoint_every_steps, last) or time_due or stop:
      health.flush()  # never save a non-finite state
      checkpointer.save(step, state, data_iter.get_state(), signature, {"skipped_nonfinite": health.skipped})
      last_save_time, health.last_saved_step = time.monotonic(), step
    if stop and not last:
      checkpointer.wait()  # the save is on disk everywhere before any process exits (srun kills the rest
      distributed.barrier("preempted")  # of a step once one task exits)
      raise guards.Preempted(f"stopped at step {step} after {watch.signal_name}; checkpoint step {step} saved in "
                             f"{checkpointer.directory}; rerun the same command to continue")
    if itstime(step, config.eval_every_steps) and not last:
      writer.write(step, evaluator.flat_metrics(evaluator.run(state["params"], state["batch_stats"])))
      progress.start(step)  # evaluation time is not training throughput
      timer.reset(step)

  results = evaluator.run(state["params"], state["batch_stats"])
  final = {"params_checksum": ckpt_lib.tree_checksum(state["params"]), **evaluator.flat_metrics(results)}
  writer.write(step, final)
  if is_main:
    workdir_lib.write_text(workdir, "final_eval.json", json.dumps(results, indent=2, sort_keys=True))
    print(evaluators.format_table(results), flush=True)
    print(f"checkpoints: {checkpointer.directory}\nmetrics:     {os.path.join(workdir, 'metrics.jsonl')}"
          f"\nfinal eval:  {os.path.join(workdir, 'final_eval.json')}", flush=True)
  return results


def _agree(decision: bool) -> bool:
  """Process 0's decision, on every process (a collective: call it at the same step everywhere)."""
  if jax.process_count() == 1:
    return decision
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(decision)))


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
  except (config_lib.ConfigError, ckpt_lib.CheckpointError, guards.GuardError) as e:
    print(f"hyperclip-train: error: {e}", file=sys.stderr)
    return 2
  except guards.Preempted as e:
    print(f"hyperclip-train: {e}", file=sys.stderr)
    return guards.EXIT_PREEMPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
