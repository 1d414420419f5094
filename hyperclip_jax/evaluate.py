"""hyperclip-eval: runs the configured evaluators on a checkpoint of a finished (or running) training run.

  hyperclip-eval --workdir runs/demo [--step N] [--config configs/demo.py] [--config.evals.zeroshot.n_eval=1024]
                 [--retrieval-pairs 512] [--linear-probe-train 512]

The model comes from the workdir's checkpoint; the evaluators from --config (default: the workdir's own
config.json), so a run can be scored on other task sets or sizes than it trained with, as long as the model
config matches. Writes WORKDIR/eval/step_<N>.json and prints the same table as the trainer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax

from hyperclip_jax import config as config_lib
from hyperclip_jax import workdir as workdir_lib


def evaluate(workdir: str, config: Any | None = None, step: int | None = None,
             retrieval_pairs: int = 0, probe_train: int = 0) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """-> (step, zero-shot {task: {top1, top5, ...}}, extra) for checkpoint `step` (default: the newest); extra
  holds 'retrieval' {dataset: {i2t_r1, ...}} and 'linear_probe' {task: {top1, ...}} when asked for."""
  from hyperclip_jax import evaluators, sharding  # late: --help stays fast
  from hyperclip_jax.data import tokenizers
  from hyperclip_jax.evaluators import linear_probe, retrieval
  from hyperclip_jax.models import two_towers
  config = config if config is not None else workdir_lib.read_config(workdir)
  try:  # the evaluators first: a bad evaluator config stops before any restore
    mesh = sharding.make_mesh(config.mesh)
    model = two_towers.build_model(config)
    tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    evaluator = evaluators.build(config, model, tokenizer, mesh)
    extra = {}
    if (retrieval_pairs or probe_train) and config.data.name != "demo":
      raise ValueError(f"--retrieval-pairs and --linear-probe-train run on held-out demo data; config.data.name="
                       f"{config.data.name!r}")
    if retrieval_pairs:
      extra["retrieval"] = retrieval.RetrievalEvaluator(
          model, tokenizer, config.data.max_len, {"demo": retrieval.demo_pairs(config.data.image_size)},
          retrieval_pairs)
    if probe_train:
      zs = config.evals.zeroshot
      tasks = linear_probe.demo_tasks(config.data.image_size, probe_train, zs.n_eval, zs.batch_size)
      extra["linear_probe"] = linear_probe.LinearProbeEvaluator(model, tokenizer, config.data.max_len, tasks)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  run = workdir_lib.load_run(workdir, step, config)
  zeroshot = evaluator.run(run.params, run.batch_stats)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  return run.step, zeroshot, {name: ev.run(params, batch_stats) for name, ev in extra.items()}


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  from hyperclip_jax import evaluators
  try:
    rest, overrides = config_lib.split_overrides(argv)
    parser = argparse.ArgumentParser(prog="hyperclip-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a hyperclip-train run directory")
    parser.add_argument("--config", default=None, help="config file for the evaluators (default: WORKDIR/config.json)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--retrieval-pairs", type=int, default=0, help="demo image-text retrieval pairs (0: off)")
    parser.add_argument("--linear-probe-train", type=int, default=0, help="linear-probe train examples (0: off)")
    args = parser.parse_args(rest)
    config = (config_lib.load_config(args.config) if args.config else workdir_lib.read_config(args.workdir))
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    config_lib.validate(config, jax.device_count())
    step, results, extra = evaluate(args.workdir, config, args.step, args.retrieval_pairs, args.linear_probe_train)
  except (config_lib.ConfigError, workdir_lib.RunError) as e:
    print(f"hyperclip-eval: error: {e}", file=sys.stderr)
    return 2
  out_dir = os.path.join(args.workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"step_{step}.json")
  from hyperclip_jax.evaluators import linear_probe, retrieval
  metrics = {k: float(v) for k, v in evaluators.zeroshot.ZeroShotEvaluator.flat_metrics(results).items()}
  metrics.update(retrieval.RetrievalEvaluator.flat_metrics(extra.get("retrieval", {})))
  metrics.update(linear_probe.LinearProbeEvaluator.flat_metrics(extra.get("linear_probe", {})))
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"step": step, "metrics": metrics, "results": results, **extra}, f, indent=2, sort_keys=True)
  print(evaluators.format_table(results))
  for name, r in extra.get("retrieval", {}).items():
    print(f"retrieval {name} ({r['num_pairs']} pairs): " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                                    if k != "num_pairs"))
  for name, r in extra.get("linear_probe", {}).items():
    print(f"linear probe {name}: top1 {r['top1']:.3f} (chance {r['chance']:.3f}, {r['num_train']} train)")
  print(f"step {step}; results: {path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
