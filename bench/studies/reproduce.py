"""The paper's claim at small scale: HyperCLIP vs. SigLIP vs. the `token` capacity control, plus ablations.

  .venv/bin/python bench/studies/reproduce.py --out docs         # the full study (make reproduce): ~90 min, 2 cores
  .venv/bin/python bench/studies/reproduce.py --quick --out DIR  # ~10 min: fewer steps, 2 seeds
  .venv/bin/python bench/studies/reproduce.py --tiny --out DIR   # the whole study on configs/demo.py:tiny=true

Every run is one hyperclip-train run (hyperclip_jax.train.train, in this process) on configs/demo.py, with its
own workdir DIR/runs/<name>; every number of the outputs is read back from those runs' metrics.jsonl:
  DIR/results.json   per run: variant, seed, overrides, zero-shot top-1 per task over steps and at the end,
                     final train loss, params_checksum; deterministic (same command -> identical file)
  DIR/throughput.json per run: median perf/images_per_sec and wall seconds (timings: kept out of results.json)
  DIR/results.md     mean +- std per task and variant, the verdicts, throughput, the ablation table
  DIR/results.png    zero-shot top-1 vs. step per variant (mean line, min-max band over seeds), one panel a task
A run whose workdir already holds a finished run of the same config is read, not retrained (rerun to resume
an interrupted study); any other workdir content is replaced.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/studies/ -> repo
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))

import numpy as np  # noqa: E402

VARIANTS = ("siglip", "hyperclip", "token")
ABLATIONS = ("set_size", "norm_mode", "bn_stats", "encoder", "condition")
NOISE_FACTOR = 2.0  # "beyond seed noise": |mean difference| > NOISE_FACTOR x pooled std over seeds


@dataclasses.dataclass(frozen=True)
class Mode:
  """One study size: the same protocol for every run of it."""
  name: str
  config_arg: str  # extra configs/demo.py argument
  steps: int
  eval_every: int
  seeds: tuple[int, ...]
  n_eval: int  # images per zero-shot task
  set_sizes: tuple[int, ...]  # set_size ablation values (the default set_size is the main hyperclip run)
  encoder: str  # the encoder ablation's other encoder
  warmup_steps: int | None = None  # None: the config's
  ablations: tuple[str, ...] = ABLATIONS  # which ablation kinds run (quick: only those that add no compile)


MODES = {
    "full": Mode("full", "", steps=450, eval_every=90, seeds=(0, 1, 2), n_eval=512, set_sizes=(4, 64),
                 encoder="mobilenetv3_large_100"),
    "quick": Mode("quick", "", steps=40, eval_every=20, seeds=(0, 1), n_eval=128, set_sizes=(4,),
                  encoder="mobilenetv3_large_100", warmup_steps=10, ablations=("condition",)),
    # tests: one ablation that compiles its own program and one that changes only the evaluation
    "tiny": Mode("tiny", "tiny=true", steps=8, eval_every=4, seeds=(0, 1), n_eval=32, set_sizes=(2,),
                 encoder="mobilenetv3_small_100", ablations=("bn_stats", "condition")),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str
  variant: str
  seed: int
  overrides: tuple[tuple[str, Any], ...] = ()  # (dotted config key, value) on top of the mode's config
  ablation: str = ""  # '' for the main runs; else the ablation's row label


def study(mode: Mode, default_set_size: int, default_bn_stats: str = "group") -> list[RunSpec]:
  """The main runs (every variant x seed), then the ablations (hyperclip, first seed, one override each)."""
  runs = [RunSpec(f"{v}_s{s}", v, s) for v in VARIANTS for s in mode.seeds]
  s0 = mode.seeds[0]
  other_bn = "group" if default_bn_stats == "global" else "global"
  ablations = [("set_size", RunSpec(f"abl_set_size{size}", "hyperclip", s0, (("model.hyper.set_size", size),),
                                    f"hyper.set_size={size} (default {default_set_size})")) for size in mode.set_sizes]
  ablations += [
      ("norm_mode", RunSpec("abl_norm_replace", "hyperclip", s0, (("model.image.norm_mode", "replace"),),
                            "image.norm_mode=replace (default residual)")),
      ("bn_stats", RunSpec(f"abl_bn_{other_bn}", "hyperclip", s0, (("model.image.bn_stats", other_bn),),
                           f"image.bn_stats={other_bn} (default {default_bn_stats})")),
      ("encoder", RunSpec("abl_encoder", "hyperclip", s0, (("model.image.name", mode.encoder),),
                          f"image.name={mode.encoder} (default efficientnet_b0), same width/depth multipliers")),
      ("condition", RunSpec("abl_cond_captions", "hyperclip", s0, (("evals.zeroshot.condition", "train_captions"),),
                            "evals.zeroshot.condition=train_captions (default classes)")),
  ]
  return runs + [r for kind, r in ablations if kind in mode.ablations]


def make_config(mode: Mode, run: RunSpec) -> Any:
  """configs/demo.py for this mode and variant, with the mode's protocol and the run's overrides."""
  from hyperclip_jax import config as config_lib
  arg = ",".join(filter(None, [f"variant={run.variant}", f"steps={mode.steps}", mode.config_arg]))
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"demo.py:{arg}"))
  settings = [("seed", run.seed), ("eval_every_steps", mode.eval_every), ("evals.zeroshot.n_eval", mode.n_eval),
              ("loss.name", "sigmoid"),  # the paper's loss for every variant, whatever configs/demo.py trains with
              # one checkpoint, at the end: an interrupted run is retrained, not resumed (see train_run)
              ("checkpoint_every_steps", mode.steps), ("checkpoint_every_secs", 0.0),
              *([("optim.schedule.warmup_steps", mode.warmup_steps)] if mode.warmup_steps is not None else []),
              *run.overrides]
  for dotted, value in settings:
    *parents, key = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    if key in node and type(node[key]) is not type(value):
      raise ValueError(f"study override {dotted}={value!r}: the config's value has type {type(node[key]).__name__}")
    with node.unlocked():  # (a key configs/demo.py lacks is added)
      node[key] = value
  return config


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of workdir/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _finished(workdir: str, config_json: str) -> bool:
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      same = f.read() == config_json
    return same and any("params_checksum" in r for r in read_metrics(workdir))
  except (OSError, ValueError):
    return False


def train_run(config: Any, workdir: str) -> float | None:
  """Trains the run in workdir (fresh) unless that workdir holds this finished run; wall seconds (None: read)."""
  from hyperclip_jax import config as config_lib
  from hyperclip_jax import train
  if _finished(workdir, config_lib.to_json(config)):
    print(f"reproduce: {workdir} is finished; reading it", file=sys.stderr, flush=True)
    return None
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.perf_counter()
  train.train(config, workdir)
  return time.perf_counter() - t0


def summarize_run(rows: list[dict[str, Any]], spec: RunSpec) -> dict[str, Any]:
  """results.json's entry of one run, from its metrics rows (the last row of a step wins)."""
  final = next(r for r in reversed(rows) if "params_checksum" in r)
  tasks = sorted({k.split("/")[1] for k in final if k.startswith("zeroshot/") and k.endswith("/top1")})
  curves = {t: [] for t in tasks}
  for r in rows:
    for t in tasks:
      if f"zeroshot/{t}/top1" in r:
        curves[t] = [p for p in curves[t] if p[0] != r["step"]] + [[r["step"], r[f"zeroshot/{t}/top1"]]]
  losses = [r for r in rows if "train/loss" in r]
  return {"variant": spec.variant, "seed": spec.seed, "ablation": spec.ablation,
          "overrides": {k: v for k, v in spec.overrides}, "step": final["step"],
          "top1": {t: final[f"zeroshot/{t}/top1"] for t in tasks}, "curves": curves,
          "loss_curve": [[r["step"], r["train/loss"]] for r in losses],
          "final_loss": losses[-1]["train/loss"] if losses else None,
          "params_checksum": final["params_checksum"]}


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample std (ddof=1; 0 for one value)."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def compare(a: list[float], b: list[float]) -> tuple[float, float, bool]:
  """(mean(a) - mean(b), pooled std, beyond noise: |diff| > NOISE_FACTOR x pooled std)."""
  (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
  pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
  diff = ma - mb
  return diff, pooled, abs(diff) > NOISE_FACTOR * pooled


def verdict(task: str, by_variant: dict[str, list[float]]) -> str:
  """A plain sentence: did hyperclip beat siglip beyond seed noise on `task`, by how much, and does token explain it."""
  h, s, t = by_variant["hyperclip"], by_variant["siglip"], by_variant["token"]
  d_hs, p_hs, sig_hs = compare(h, s)
  d_ts, p_ts, sig_ts = compare(t, s)
  d_ht, p_ht, sig_ht = compare(h, t)
  pts = lambda d: f"{100 * d:+.1f} points"
  noise = lambda p: f"{NOISE_FACTOR:g}x pooled std = {100 * NOISE_FACTOR * p:.1f} points"
  if sig_hs and d_hs > 0:
    head = f"**HyperCLIP beats SigLIP** by {pts(d_hs)} ({noise(p_hs)})"
    if sig_ht and d_ht > 0:
      tail = f"token does not explain it: HyperCLIP also beats token by {pts(d_ht)}"
    elif sig_ts and d_ts > 0:
      tail = f"token explains it: token beats SigLIP by {pts(d_ts)} and HyperCLIP is within noise of token"
    else:
      tail = f"token is within noise of both (token - SigLIP {pts(d_ts)}, HyperCLIP - token {pts(d_ht)})"
  elif sig_hs:
    head = f"**SigLIP beats HyperCLIP** by {pts(-d_hs)} ({noise(p_hs)})"
    tail = f"token - SigLIP {pts(d_ts)}" + (" (beyond noise)" if sig_ts else " (within noise)")
  else:
    head = f"no difference beyond seed noise: HyperCLIP - SigLIP {pts(d_hs)} ({noise(p_hs)})"
    tail = f"token - SigLIP {pts(d_ts)}" + (" (beyond noise)" if sig_ts else " (within noise)")
  return f"{task}: {head}; {tail}."


def build_results(mode: Mode, specs: list[RunSpec], runs: dict[str, dict[str, Any]], warmup_steps: int
                  ) -> dict[str, Any]:
  """results.json: the protocol, every run, and the per-task mean/std of the main runs."""
  main = [s for s in specs if not s.ablation]
  tasks = list(runs[main[0].name]["top1"])
  summary = {}
  for task in tasks:
    summary[task] = {}
    for v in VARIANTS:
      values = [runs[s.name]["top1"][task] for s in main if s.variant == v]
      m, sd = mean_std(values)
      summary[task][v] = {"mean": m, "std": sd, "n": len(values)}
  return {"protocol": {"mode": mode.name, "config": f"configs/demo.py:variant=<variant>,steps={mode.steps}"
                       + (f",{mode.config_arg}" if mode.config_arg else ""), "steps": mode.steps,
                       "eval_every_steps": mode.eval_every, "seeds": list(mode.seeds), "n_eval": mode.n_eval,
                       "warmup_steps": warmup_steps,
                       "noise_rule": f"|mean difference| > {NOISE_FACTOR:g} x pooled std (sample std over seeds)"},
          "runs": runs, "summary": summary}


def write_markdown(path: str, results: dict[str, Any], throughput: dict[str, Any], specs: list[RunSpec],
                   command: str, chance: dict[str, float]) -> None:
  """results.md: the harness, the verdicts, the tables (all numbers from results.json / throughput.json)."""
  runs, summary, proto = results["runs"], results["summary"], results["protocol"]
  main = [s for s in specs if not s.ablation]
  tasks = list(summary)
  lines = [
      "# HyperCLIP vs. SigLIP vs. token at small scale (the demo data)",
      "",
      "Generated by `bench/studies/reproduce.py`; do not edit by hand. It trains `siglip`, `hyperclip` and "
      "`token` with the same encoder, data, steps and seeds (a seed changes init and data order), evaluates every "
      "zero-shot task of the demo data over training, and runs each ablation as one config change of the "
      "hyperclip run on the first seed. Every number below is read from the runs' own `metrics.jsonl` "
      f"(`{throughput['runs_dir']}/<name>/`; per-run values in `results.json`).",
      "",
      f"- Command: `{command}`",
      f"- Config: `{proto['config']}`, {proto['steps']} steps per run ({proto['warmup_steps']} of lr warmup; "
      "batch and the rest as the config), "
      f"zero-shot eval every {proto['eval_every_steps']} steps on {proto['n_eval']} images per task; seeds "
      f"{', '.join(map(str, proto['seeds']))}",
      f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {_backend()}; wall time of the study: "
      f"{throughput['study_wall_s'] / 60:.1f} min ({throughput['trained']} runs trained, the rest read back)",
      f"- Seed-noise rule: a difference counts when {proto['noise_rule']}.",
      *([f"- This is the `{proto['mode']}` study, a check of the harness: its runs are too short to judge the "
         "claim; `make reproduce` runs the full one."] if proto["mode"] != "full" else []),
      "",
      "## Zero-shot top-1 (mean +- std over seeds)",
      "",
      "| task | classes | chance | " + " | ".join(VARIANTS) + " | hyperclip - siglip |",
      "|---|---:|---:|" + "---:|" * (len(VARIANTS) + 1),
  ]
  for task in tasks:
    cells = [f"{summary[task][v]['mean']:.3f} +- {summary[task][v]['std']:.3f}" for v in VARIANTS]
    diff = summary[task]["hyperclip"]["mean"] - summary[task]["siglip"]["mean"]
    lines.append(f"| {task} | {round(1 / chance[task])} | {chance[task]:.3f} | " + " | ".join(cells)
                 + f" | {diff:+.3f} |")
  lines += ["", "## Verdicts", ""]
  for task in tasks:
    by_variant = {v: [runs[s.name]["top1"][task] for s in main if s.variant == v] for v in VARIANTS}
    lines.append(f"- {verdict(task, by_variant)}")
  lines += ["", "## Throughput (training images/s: median `perf/images_per_sec` of each run, mean over seeds)", "",
            "| variant | images/s | vs. siglip |", "|---|---:|---:|"]
  ips = {v: float(np.mean([throughput["runs"][s.name]["images_per_sec"] for s in main if s.variant == v]))
         for v in VARIANTS}
  for v in VARIANTS:
    lines.append(f"| {v} | {ips[v]:.1f} | {ips[v] / ips['siglip']:.3f}x |")
  lines += ["", "Timings are of this machine while the study ran (other load slows them); they are kept in "
            "`throughput.json`, not `results.json`, so that results.json is identical across reruns.", "",
            "## Ablations (hyperclip, seed " + str(proto["seeds"][0]) + ", final top-1; one change each)", "",
            "| run | change | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
  base = next(s for s in main if s.variant == "hyperclip")
  rows = [(base.name, "(none: the main hyperclip run)")] + [(s.name, s.ablation) for s in specs if s.ablation]
  for name, change in rows:
    lines.append(f"| {name} | {change} | " + " | ".join(f"{runs[name]['top1'][t]:.3f}" for t in tasks) + " |")
  lines.append("| (seed std of hyperclip) | noise scale of one row | "
               + " | ".join(f"{summary[t]['hyperclip']['std']:.3f}" for t in tasks) + " |")
  lines += ["", "The ablation rows are one seed each: a difference to the first row smaller than about twice the "
            "seed std (last row) is noise. Every other run uses configs/demo.py's `bn_stats` and `condition` (the "
            "defaults named in the rows above). `condition=train_captions` trains exactly "
            "the first row's model (same params_checksum) and conditions the hypernet at test time on "
            f"{'the first set_size captions of the training data'} instead of each task's class prompts.", "",
            "![zero-shot top-1 vs. step](results.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def _backend() -> str:
  import jax
  return f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s))"


def plot(path: str, results: dict[str, Any], specs: list[RunSpec], chance: dict[str, float]) -> None:
  """Zero-shot top-1 vs. step per variant: mean line and min-max band over seeds, one panel per task."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs, tasks = results["runs"], list(results["summary"])
  main = [s for s in specs if not s.ablation]
  cols = 4
  rows = math.ceil((len(tasks) + 1) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
  colours = {"siglip": "tab:blue", "hyperclip": "tab:red", "token": "tab:green"}
  panels = list(axes.flat)
  for ax, task in zip(panels, tasks):
    for v in VARIANTS:
      curves = [runs[s.name]["curves"][task] for s in main if s.variant == v]
      steps = [p[0] for p in curves[0]]
      values = np.array([[p[1] for p in c] for c in curves])
      ax.plot(steps, values.mean(0), color=colours[v], label=v, marker="o", ms=3)
      ax.fill_between(steps, values.min(0), values.max(0), color=colours[v], alpha=0.2)
    ax.axhline(chance[task], color="grey", ls="--", lw=1)
    ax.set_title(task, fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
  ax = panels[len(tasks)]
  for v in VARIANTS:  # training loss, mean over seeds
    curves = [runs[s.name]["loss_curve"] for s in main if s.variant == v]
    ax.plot([p[0] for p in curves[0]], np.mean([[p[1] for p in c] for c in curves], 0), color=colours[v], label=v)
  ax.set_title("train loss (mean over seeds)", fontsize=10)
  ax.set_xlabel("step")
  ax.legend(fontsize=8)
  for ax in panels[len(tasks) + 1:]:
    ax.axis("off")
  axes.flat[0].set_ylabel("zero-shot top-1 (dashed: chance)")
  fig.suptitle(f"HyperCLIP vs. SigLIP vs. token: mean and min-max over seeds {results['protocol']['seeds']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_study(mode: Mode, out: str, runs_dir: str, command: str) -> dict[str, Any]:
  """Trains (or reads back) every run of the study in runs_dir/<name> and writes the four outputs to `out`."""
  import jax
  from hyperclip_jax import config as config_lib
  from hyperclip_jax import validation
  base = make_config(mode, RunSpec("x", "hyperclip", 0))
  specs = study(mode, base.model.hyper.set_size, base.model.image.get("bn_stats", "group"))
  configs = {s.name: make_config(mode, s) for s in specs}
  for name, config in configs.items():  # every run's config is checked before the first one trains
    try:
      validation.validate(config, jax.device_count())
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"study run {name}: {e}") from None
  t0 = time.perf_counter()
  runs, throughput, trained = {}, {"runs": {}}, 0
  for spec in specs:
    workdir = os.path.join(runs_dir, spec.name)
    print(f"reproduce: run {spec.name} ({len(runs) + 1}/{len(specs)})", file=sys.stderr, flush=True)
    wall = train_run(configs[spec.name], workdir)
    trained += wall is not None
    rows = read_metrics(workdir)
    runs[spec.name] = summarize_run(rows, spec)
    ips = [r["perf/images_per_sec"] for r in rows if isinstance(r.get("perf/images_per_sec"), float)
           and not math.isnan(r["perf/images_per_sec"])]
    throughput["runs"][spec.name] = {"images_per_sec": float(np.median(ips)) if ips else float("nan"),
                                     "wall_s": wall}
  throughput.update(study_wall_s=time.perf_counter() - t0, trained=int(trained), runs_dir=runs_dir)
  results = build_results(mode, specs, runs, configs[specs[0].name].optim.schedule.warmup_steps)
  from hyperclip_jax.data.sources import demo
  chance = {t: 1.0 / len(task.class_names) for t, task in demo.demo_tasks(32, 1).items()}
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out, "throughput.json"), "w", encoding="utf-8") as f:
    json.dump(throughput, f, indent=1, sort_keys=True)
  write_markdown(os.path.join(out, "results.md"), results, throughput, specs, command, chance)
  plot(os.path.join(out, "results.png"), results, specs, chance)
  print(f"reproduce: wrote {out}/results.md, results.json, results.png, throughput.json", flush=True)
  return results


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="bench/studies/reproduce.py", description=__doc__.split("\n\n")[0])
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--quick", action="store_true", help=f"<= 10 min: {MODES['quick']}")
  size.add_argument("--tiny", action="store_true", help="the whole study on the tiny config (tests)")
  parser.add_argument("--out", required=True, help="output folder of results.md/json/png and throughput.json")
  parser.add_argument("--runs", default=None, help="folder of the runs' workdirs (default: OUT/runs)")
  args = parser.parse_args(argv)
  mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
  os.makedirs(args.out, exist_ok=True)
  command = (os.environ.get("REPRODUCE_COMMAND")
             or shlex.join([".venv/bin/python", "bench/studies/reproduce.py", *argv]))
  from hyperclip_jax import config as config_lib
  try:
    run_study(mode, args.out, args.runs or os.path.join(args.out, "runs"), command)
  except config_lib.ConfigError as e:
    print(f"reproduce: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
