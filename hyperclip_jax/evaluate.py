"""hyperclip-eval: runs the configured evaluators on a checkpoint of a finished (or running) training run.

  hyperclip-eval --workdir runs/demo [--step N] [--config configs/demo.py] [--config.evals.zeroshot.n_eval=1024]
                 [--config.evals.zeroshot.recalibrate_bn=64]  (any setting of an evals entry, default or not)
                 [--retrieval-pairs 512] [--linear-probe-train 512]

The model comes from the workdir's checkpoint; the evaluators from config.evals of --config (default: the
workdir's own config.json), so a run can be scored on other data sets or sizes than it trained with, as long
as the model config matches: zero-shot, retrieval and linear probe alike (hyperclip_jax/evaluators). The two
flags add demo retrieval / linear-probe evaluators. Writes WORKDIR/eval/step_<N>.json ({step, metrics,
results}, results as in final_eval.json) and prints the same table as the trainer.

On several hosts, run the same command on every host (as the trainer, config.distributed): each host decodes
1/P of every zero-shot eval set and the results are exactly those of one host (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax
import ml_collections

from hyperclip_jax import config as config_lib
from hyperclip_jax import distributed, evaluators, model_dir, sharding, validation
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

DISTRIBUTED_OFF = ml_collections.ConfigDict(dict(mode="off"))  # a config from before config.distributed existed


def add_demo_evals(config: Any, retrieval_pairs: int = 0, probe_train: int = 0) -> None:
  """--retrieval-pairs / --linear-probe-train: demo retrieval and linear-probe evaluators added to config.evals."""
  with config.unlocked():
    if "evals" not in config:
      config.evals = ml_collections.ConfigDict()
    if retrieval_pairs:
      config.evals.retrieval_demo = dict(type="retrieval", data=dict(name="demo"), num_pairs=retrieval_pairs)
    if probe_train:
      config.evals.linear_probe_demo = dict(type="linear_probe", data=dict(name="demo"), n_train=probe_train,
                                            n_eval=probe_train, batch_size=64)


def evaluate(workdir: str, config: Any | None = None, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """-> (step, results) for checkpoint `step` (default: the newest) under every evaluator of config.evals
  (default config: the workdir's own); results as in final_eval.json (evaluators.Evaluators.run)."""
  config = config if config is not None else model_dir.open_config(workdir)
  try:  # the evaluators first: a bad evaluator config stops before any restore
    mesh = sharding.make_mesh(config.mesh)
    model = two_towers.build_model(config)
    tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    evaluator = evaluators.build(config, model, tokenizer, mesh)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  run = model_dir.open_run(workdir, step, config)  # a training workdir or a model directory
  return run.step, evaluator.run(run.params, run.batch_stats)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    rest, overrides = config_lib.split_overrides(argv)
    parser = argparse.ArgumentParser(prog="hyperclip-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a hyperclip-train run directory")
    parser.add_argument("--config", default=None, help="config file for the evaluators (default: WORKDIR/config.json)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--retrieval-pairs", type=int, default=0, help="add demo image-text retrieval (pairs; 0: off)")
    parser.add_argument("--linear-probe-train", type=int, default=0,
                        help="add a demo linear probe (train = test examples per task; 0: off)")
    args = parser.parse_args(rest)
    config = (config_lib.load_config(args.config) if args.config else model_dir.open_config(args.workdir))
    evaluators.fill_defaults(config)  # --config.evals.zeroshot.recalibrate_bn=64 needs the key to exist
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    add_demo_evals(config, args.retrieval_pairs, args.linear_probe_train)
    distributed.initialize(config.get("distributed") or DISTRIBUTED_OFF)  # several hosts: before any device use
    validation.validate(config, jax.device_count())
    step, results = evaluate(args.workdir, config, args.step)
  except (config_lib.ConfigError, workdir_lib.RunError) as e:
    print(f"hyperclip-eval: error: {e}", file=sys.stderr)
    return 2
  if jax.process_index() > 0:  # every host computed the same results; the first writes them
    return 0
  path = os.path.join(args.workdir, "eval", f"step_{step}.json")
  metrics = {k: float(v) for k, v in evaluators.Evaluators.flat_metrics(results).items()}
  workdir_lib.write_text(args.workdir, f"eval/step_{step}.json",  # local or gs:// workdir
                         json.dumps({"step": step, "metrics": metrics, "results": results}, indent=2, sort_keys=True))
  print(evaluators.format_table(results))
  print(f"step {step}; results: {path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
