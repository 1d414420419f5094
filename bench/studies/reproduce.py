"""Does HyperCLIP help? HyperCLIP vs. SigLIP and its capacity controls over an encoder-width sweep, on the demo data.

  .venv/bin/python bench/studies/reproduce.py --out docs         # the full study (make reproduce): <= 120 min, 2 cores
  .venv/bin/python bench/studies/reproduce.py --quick --out DIR  # <= 10 min: one width, 2 seeds, 3 arms
  .venv/bin/python bench/studies/reproduce.py --tiny --out DIR   # the whole protocol on configs/demo.py:tiny=true

The protocols (PROTOCOL, then PROTOCOL_V2 below) are pre-registered: docs/results.md carries each from before its
first full run, and the generator keeps those sections verbatim (it stops if this file's text no longer matches
them). The verdict is the second protocol's; the first one's outcome is recomputed on its seeds. Stages:
  1. pilot (seed PILOT, never a study seed): siglip at every width -> the tasks of the primary endpoint per
     width (analysis.select_tasks); hyperclip at the claim width with each loss.scope -> the scope of every arm
     with a hypernetwork (the better primary endpoint; ties: the first listed).
  2. main: every arm x width x seed (extra seeds at the claim width), the paper's sigmoid loss; then, at the claim
     width, hyperclip with the other scope (the loss-scope ablation) and siglip/hyperclip with data.task_sets.
  3. diagnostics (bench/studies/conditioning.py) on every main and task_sets run with a hypernetwork; zero-shot
     with recalibrated BatchNorm on siglip/hyperclip at the claim width.
  4. analysis (bench/studies/analysis.py): per-seed paired differences, t-intervals, the verdict by the rule.

Every run is one hyperclip-train run (hyperclip_jax.train.train, in this process) with its own workdir
RUNS/<name>; its numbers are read back from its metrics.jsonl and checkpoint. Outputs in OUT:
  results.json     protocol settings, pilot, every run (top-1 per task, diagnostics, params_checksum), analysis,
                   verdict; deterministic (same command -> identical file)
  throughput.json  per run: median training images/s and wall seconds; study wall time, machine, commit
  results.md       the verdict, the protocol, the tables (every number from the two files above)
  results.png      the effect: hyperclip - siglip paired difference (mean, 95% interval, seeds) vs. encoder width
A workdir that holds a finished run of the same config is read, not retrained (rerun to resume).
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
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # bench/studies/ -> repo
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
sys.path.insert(0, HERE)

import analysis  # noqa: E402  (bench/studies/analysis.py)
import numpy as np  # noqa: E402

ARMS = ("siglip", "hyperclip", "token", "linear", "conv")  # model.variant; the last three are the controls
HYPER_ARMS = ("hyperclip", "token", "linear", "conv")  # the arms with a hypernetwork (diagnostics, loss.scope)
SCOPES = ("batch", "group")  # loss.scope candidates of the pilot
PROTOCOL_HEADING = "## Protocol (pre-registered, 2026-12-03)"
PROTOCOL = PROTOCOL_HEADING + """

Stated before the first full run of `make reproduce`; the generator keeps this section verbatim.

- **Question.** Does conditioning the image tower's norm parameters on the set of texts (HyperCLIP) raise
  zero-shot top-1 over SigLIP with the same small encoder, and is the gain from the text conditioning rather than
  from the hypernetwork's extra capacity?
- **Arms** (`model.variant`, same data, steps and seeds; the paper's sigmoid loss for all): `siglip` (baseline),
  `hyperclip`, and the controls `token` (learned tokens instead of texts: a constant Δ at test time), `linear`
  (a generated rank-32 update of the image tower's final projection), `conv` (of the last stage's 1x1 conv
  weights). Configs: `configs/demo.py` at `model.image.width_mult` 0.1 (capacity-limited) and 0.25 (the demo's
  encoder), 150 steps each (30 of warmup; a third of the demo's default, to fit 2 CPU cores in 120 min), batch
  128, 64 px images; zero-shot evaluation at the end on 256 images per demo task.
- **Seeds.** 0, 1, 2 for every arm at both widths; a seed fixes init and data order for every arm, so arms are
  compared per seed (paired). The pilot uses seed 100 only.
- **Pilot** (seed 100, before the main runs, applied by the script): (a) `siglip` at each width; a demo task
  enters that width's primary endpoint unless siglip's pilot top-1 is >= 0.95 (ceiling) or < 1.2x chance
  (floor). (b) `hyperclip` at width 0.1 with `loss.scope` = `batch` and = `group`; the scope with the higher
  pilot primary endpoint (ties: `batch`) is used by every arm with a hypernetwork; `siglip` has no sets and
  trains with `batch`. The other scope is run as an ablation of `hyperclip` at width 0.1 on seeds 0-2.
- **Primary endpoint.** Per run: the mean zero-shot top-1 over the selected tasks of its width.
- **Claim width.** 0.1, the capacity-limited encoder (the paper's claim is about small image encoders); width
  0.25 is reported with the same analysis but does not enter the verdict.
- **Analysis.** Per-seed paired differences hyperclip - siglip and hyperclip - each control; mean and a
  two-sided 95% t-interval (n - 1 degrees of freedom).
- **Diagnostics** (eval only, on every trained run with a hypernetwork): std of the generated Δ across 64
  training caption sets over its RMS; in-batch image->text top-1 with each group conditioned on its own set,
  another group's set, and the mean over all sets; zero-shot conditioned on the task's classes, on another demo
  task's class prompts (`wrong_task`), and on the mean Δ of 64 training caption sets (`train_sets_mean`).
  *Set dependence is shown* when, at the claim width, hyperclip's mean paired differences classes - wrong_task
  (primary endpoint) and own - other set (in-batch top-1) are both > 0.
- **Verdict** (at the claim width). *Reproduced*: the interval of hyperclip - siglip lies above 0, hyperclip's
  mean paired difference to every control arm is > 0, and set dependence is shown. *Not reproduced*: the
  interval's upper bound is below the minimal effect of +1 point; or the interval lies above 0 but a control
  matches or beats hyperclip or set dependence is not shown (a gain, but not from the text conditioning).
  *Inconclusive (add seeds)*: otherwise.
"""

PROTOCOL_V2_HEADING = "## Protocol, second version (pre-registered, 2026-12-03)"
PROTOCOL_V2 = PROTOCOL_V2_HEADING + """

Stated after the first protocol's run (commit b5191e2: *inconclusive (add seeds)*, hyperclip - siglip = +9.2
points [-1.8, +20.3] at width 0.1) and before this version's first run. The first protocol's section stays above,
unchanged, and its outcome is recomputed on this run's seeds 0-2 under its own rule ("Outcome of the first
protocol"). The generator keeps this section verbatim too.

- **Unchanged.** Arms, configs, widths, steps, the pilot and what it selects, the primary endpoint, the claim
  width, the analysis (paired differences, two-sided 95% t-intervals) and the verdict's three outcomes.
- **More seeds** (the first protocol's own remedy for *inconclusive*): every arm at width 0.1 trains on seeds
  0, 1, 2, 3, 4; width 0.25 stays at seeds 0-2. All paired differences at width 0.1 use the five seeds; the
  loss-scope ablation stays at seeds 0-2.
- **Set dependence, by intervals.** *Shown* when, at width 0.1, the 95% intervals of hyperclip's paired
  differences classes - wrong_task (primary endpoint) and own - other set (in-batch top-1) both lie above 0
  (the first protocol asked only for means > 0). The verdict uses this rule.
- **Task-shaped training sets** (ablation, not in the verdict): `siglip` and `hyperclip` at width 0.1 with
  `data.task_sets=0.25` (a quarter of the conditioning groups are task-shaped sets: one attribute, distinct
  values, class-prompt captions, same-class rows as positives), seeds 0-2, the pilot's loss.scope. Reported:
  the paired differences hyperclip (task_sets) - hyperclip, siglip (task_sets) - siglip and hyperclip (task_sets)
  - siglip (task_sets), and hyperclip (task_sets)'s conditioning diagnostics with intervals. Not chosen by a
  pilot: the main runs stay those of the first protocol, so that its outcome can be recomputed.
- **Recalibrated BatchNorm** (eval only, not in the verdict): `siglip` and `hyperclip` at width 0.1, every
  seed, zero-shot with each task's BatchNorm statistics re-estimated under its Θ' on 512 held-out training
  images (`evals.zeroshot.recalibrate_bn=512`, never test images). Reported: the paired differences
  arm (recalibrated) - arm and hyperclip (recalibrated) - siglip (recalibrated).
"""
PROTOCOLS = (PROTOCOL, PROTOCOL_V2)  # in the order results.md carries them


@dataclasses.dataclass(frozen=True)
class Mode:
  """One study size: the same protocol for every run of it (the full mode is the one PROTOCOL states)."""
  name: str
  config_arg: str  # extra configs/demo.py argument
  steps: int
  warmup_steps: int
  seeds: tuple[int, ...]
  widths: tuple[float, ...]  # model.image.width_mult sweep
  claim_width: float  # the width the verdict is taken at
  n_eval: int  # images per zero-shot task
  arms: tuple[str, ...] = ARMS
  scopes: tuple[str, ...] = SCOPES  # loss.scope candidates of the pilot (one: no scope pilot)
  scope_ablation: bool = True  # run hyperclip with the other scope(s) on every seed at the claim width
  pilot_seed: int = 100
  diag_sets: int = 64  # training caption sets of the Δ spread and of train_sets_mean
  inbatch_batches: int = 4  # batches of held-out pairs of the in-batch diagnostic
  ceiling: float = analysis.CEILING
  floor_x_chance: float = analysis.FLOOR_X_CHANCE
  # Hook: extra (dotted key, value) overrides of every arm with a hypernetwork, e.g. (("data.task_sets", True),)
  # once the data pipeline can form task-shaped caption sets; empty: the config's own sets.
  hyper_overrides: tuple[tuple[str, Any], ...] = ()
  # data.contrast_prob: the demo config's value when the protocol was registered (configs/demo.py now has 1.0)
  contrast_prob: float = 0.5
  # -- the second protocol (PROTOCOL_V2) --
  extra_seeds: tuple[int, ...] = ()  # more seeds for every arm at the claim width
  task_sets: float = 0.0  # data.task_sets of the task-shaped-sets ablation at the claim width (0: none)
  task_sets_arms: tuple[str, ...] = ("siglip", "hyperclip")
  task_sets_seeds: tuple[int, ...] = (0, 1, 2)
  recalibrate_bn: int = 0  # eval-only zero-shot with BatchNorm re-estimated on N held-out images (0: none)
  recalibrate_arms: tuple[str, ...] = ("siglip", "hyperclip")  # at the claim width, every seed

  def seeds_at(self, width: float) -> tuple[int, ...]:
    return self.seeds + (self.extra_seeds if width == self.claim_width else ())


MODES = {
    "full": Mode("full", "", steps=150, warmup_steps=30, seeds=(0, 1, 2), widths=(0.1, 0.25), claim_width=0.1,
                 n_eval=256, extra_seeds=(3, 4), task_sets=0.25, recalibrate_bn=512),
    # the harness at <= 10 min: one width, the arms every checkout has, no scope pilot
    "quick": Mode("quick", "", steps=30, warmup_steps=10, seeds=(0, 1), widths=(0.1,), claim_width=0.1,
                  n_eval=128, arms=("siglip", "hyperclip", "token"), scopes=("batch",), scope_ablation=False,
                  diag_sets=16, inbatch_batches=2),
    # tests: two widths, both scopes, the ablation; no floor (the tiny runs sit near chance)
    "tiny": Mode("tiny", "tiny=true", steps=8, warmup_steps=2, seeds=(0, 1), widths=(0.1, 0.2), claim_width=0.1,
                 n_eval=32, arms=("siglip", "hyperclip", "token"), diag_sets=4, inbatch_batches=1,
                 floor_x_chance=0.0, contrast_prob=0.0,  # tiny=true's own value
                 extra_seeds=(2,), task_sets=0.5, task_sets_seeds=(0, 1), recalibrate_bn=32),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str
  arm: str
  seed: int
  width: float
  scope: str = "batch"
  stage: str = "main"  # pilot | main | ablation | task_sets
  overrides: tuple[tuple[str, Any], ...] = ()


def run_name(arm: str, width: float, seed: int, scope: str | None = None) -> str:
  return f"{arm}_w{width:g}_s{seed}" + (f"_{scope}" if scope else "")


def pilot_specs(mode: Mode) -> list[RunSpec]:
  """siglip at every width, hyperclip at the claim width with each scope (one scope: no hyperclip pilot)."""
  s = mode.pilot_seed
  runs = [RunSpec(f"pilot_{run_name('siglip', w, s)}", "siglip", s, w, stage="pilot") for w in mode.widths]
  if len(mode.scopes) > 1:
    runs += [RunSpec(f"pilot_{run_name('hyperclip', mode.claim_width, s, sc)}", "hyperclip", s, mode.claim_width,
                     sc, "pilot") for sc in mode.scopes]
  return runs


def main_specs(mode: Mode, scope: str) -> list[RunSpec]:
  """Every arm x width x seed (arms with a hypernetwork at `scope`), then the loss-scope ablation."""
  runs = []
  for w in mode.widths:
    for arm in mode.arms:
      hyper = arm in HYPER_ARMS
      runs += [RunSpec(run_name(arm, w, s), arm, s, w, scope if hyper else "batch",
                       overrides=mode.hyper_overrides if hyper else ()) for s in mode.seeds_at(w)]
  if mode.scope_ablation:
    runs += [RunSpec(run_name("hyperclip", mode.claim_width, s, other), "hyperclip", s, mode.claim_width, other,
                     "ablation", mode.hyper_overrides) for other in mode.scopes if other != scope for s in mode.seeds]
  if mode.task_sets:
    w = mode.claim_width
    for arm in mode.task_sets_arms:
      hyper = arm in HYPER_ARMS
      runs += [RunSpec(task_sets_name(mode, arm, s), arm, s, w, scope if hyper else "batch", "task_sets",
                       (("data.task_sets", float(mode.task_sets)), *(mode.hyper_overrides if hyper else ())))
               for s in mode.task_sets_seeds]
  return runs


def task_sets_name(mode: Mode, arm: str, seed: int) -> str:
  return f"{run_name(arm, mode.claim_width, seed)}_ts{mode.task_sets:g}"


def make_config(mode: Mode, run: RunSpec) -> Any:
  """configs/demo.py for this mode and arm, with the protocol's settings and the run's overrides."""
  from hyperclip_jax import config as config_lib
  arg = ",".join(filter(None, [f"variant={run.arm}", f"steps={mode.steps}", mode.config_arg]))
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"demo.py:{arg}"))
  settings = [("seed", run.seed), ("model.image.width_mult", float(run.width)),
              ("loss.name", "sigmoid"),  # the paper's loss for every arm, whatever configs/demo.py trains with
              ("data.contrast_prob", mode.contrast_prob),
              ("loss.scope", run.scope), ("optim.schedule.warmup_steps", mode.warmup_steps),
              ("eval_every_steps", mode.steps), ("evals.zeroshot.n_eval", mode.n_eval),
              # one checkpoint, at the end: an interrupted run is retrained, not resumed (see train_run)
              ("checkpoint_every_steps", mode.steps), ("checkpoint_every_secs", 0.0), *run.overrides]
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
  losses = [r for r in rows if "train/loss" in r]
  return {"arm": spec.arm, "seed": spec.seed, "width": spec.width, "scope": spec.scope, "stage": spec.stage,
          "overrides": {k: v for k, v in spec.overrides}, "step": final["step"],
          "top1": {t: final[f"zeroshot/{t}/top1"] for t in tasks},
          "final_loss": losses[-1]["train/loss"] if losses else None, "params_checksum": final["params_checksum"]}


class Runner:
  """Trains or reads back runs, checking every config before the first one trains."""

  def __init__(self, mode: Mode, runs_dir: str):
    self.mode, self.runs_dir = mode, runs_dir
    self.runs: dict[str, dict[str, Any]] = {}
    self.throughput: dict[str, dict[str, Any]] = {}
    self.trained = 0

  def check(self, specs: list[RunSpec]) -> None:
    import jax

    from hyperclip_jax import config as config_lib
    from hyperclip_jax import validation
    for spec in specs:
      try:
        validation.validate(make_config(self.mode, spec), jax.device_count())
      except (config_lib.ConfigError, ValueError) as e:
        raise config_lib.ConfigError(f"study run {spec.name}: {e}") from None

  def run(self, specs: list[RunSpec]) -> None:
    for i, spec in enumerate(specs):
      workdir = os.path.join(self.runs_dir, spec.name)
      print(f"reproduce: {spec.stage} run {spec.name} ({i + 1}/{len(specs)})", file=sys.stderr, flush=True)
      wall = train_run(make_config(self.mode, spec), workdir)
      self.trained += wall is not None
      rows = read_metrics(workdir)
      self.runs[spec.name] = summarize_run(rows, spec)
      ips = [r["perf/images_per_sec"] for r in rows if isinstance(r.get("perf/images_per_sec"), float)
             and not math.isnan(r["perf/images_per_sec"])]
      self.throughput[spec.name] = {"images_per_sec": float(np.median(ips)) if ips else None, "wall_s": wall}


def demo_chance() -> dict[str, float]:
  from hyperclip_jax.data.sources import demo
  return {t: 1.0 / len(task.class_names) for t, task in demo.demo_tasks(32, 1).items()}


def choose_scope(mode: Mode, runs: dict[str, Any], tasks: list[str]) -> tuple[str, dict[str, float | None]]:
  """The pilot's loss.scope: the higher hyperclip primary endpoint at the claim width (ties: the first)."""
  if len(mode.scopes) == 1:
    return mode.scopes[0], {}
  scores = {s.scope: analysis.endpoint(runs[s.name]["top1"], tasks) for s in pilot_specs(mode)
            if s.arm == "hyperclip"}
  best = mode.scopes[0]
  for sc in mode.scopes[1:]:
    if scores[sc] is not None and (scores[best] is None or scores[sc] > scores[best]):
      best = sc
  return best, scores


def analyse(mode: Mode, runs: dict[str, Any], diagnostics: dict[str, Any], selected: dict[str, list[str]],
            scope: str, second: bool = True) -> dict[str, Any]:
  """Per width: primary endpoints per arm and seed, paired differences, conditioning rows; the verdict.
  second: the second protocol (its seeds, set dependence by intervals, the task_sets and recalibrated-BN rows);
  False: the first protocol (seeds only, set dependence by means)."""
  out: dict[str, Any] = {}
  for w in mode.widths:
    tasks = selected[f"{w:g}"]
    seeds = mode.seeds_at(w) if second else mode.seeds
    ep = {arm: {s: analysis.endpoint(runs[run_name(arm, w, s)]["top1"], tasks) for s in seeds}
          for arm in mode.arms}
    pairs = {f"hyperclip - {arm}": analysis.paired(ep["hyperclip"], ep[arm]) for arm in mode.arms
             if arm != "hyperclip"}
    conditioning, dependence = {}, {}
    for arm in [a for a in mode.arms if a in HYPER_ARMS]:
      conditioning[arm], dependence[arm] = _conditioning(
          ep[arm], {s: diagnostics[run_name(arm, w, s)] for s in seeds}, tasks)
    out[f"{w:g}"] = {"tasks": tasks, "seeds": list(seeds), "endpoint": ep,
                     "paired": {k: _json(p) for k, p in pairs.items()},
                     "conditioning": conditioning, "set_dependence": dependence}
    if mode.scope_ablation and w == mode.claim_width:
      for other in [sc for sc in mode.scopes if sc != scope]:
        abl = {s: analysis.endpoint(runs[run_name("hyperclip", w, s, other)]["top1"], tasks) for s in mode.seeds}
        out[f"{w:g}"][f"scope_{other}"] = {"endpoint": abl,
                                           f"hyperclip ({scope}) - hyperclip ({other})":
                                           _json(analysis.paired(ep["hyperclip"], abl))}
  claim = out[f"{mode.claim_width:g}"]
  cond, dep = claim["conditioning"].get("hyperclip", {}), claim["set_dependence"].get("hyperclip", {})
  set_dep = analysis.SetDependence(_paired(cond.get("classes - wrong_task")), _paired(dep.get("own - other")),
                                   "interval" if second else "mean")
  verdict, reason = analysis.decide(
      _paired(claim["paired"]["hyperclip - siglip"]),
      {a: _paired(claim["paired"][f"hyperclip - {a}"]) for a in mode.arms if a not in ("siglip", "hyperclip")},
      set_dep)
  result = {"widths": out, "verdict": verdict, "reason": reason, "set_dependence_shown": set_dep.shown,
            "set_dependence_rule": set_dep.rule}
  if second and mode.task_sets:
    result["task_sets"] = _task_sets(mode, runs, diagnostics, claim)
  if second and mode.recalibrate_bn:
    result["recalibrated_bn"] = _recalibrated(mode, runs, claim)
  return result


def _conditioning(ep: dict[int, Any], diag: dict[int, Any], tasks: list[str]) -> tuple[dict, dict]:
  """The test-time conditioning rows and the set-dependence row of one arm (endpoints `ep`, diagnostics `diag`)."""
  rows = {"classes": ep}
  for cond in ("wrong_task", "train_sets_mean"):
    rows[cond] = {s: analysis.endpoint(d["zeroshot"][cond], tasks) for s, d in diag.items()}
  conditioning = {c: {"per_seed": v, "mean": _mean(v.values())} for c, v in rows.items()}
  conditioning["classes - wrong_task"] = _json(analysis.paired(rows["classes"], rows["wrong_task"]))
  inb = {k: {s: d["inbatch"][k] for s, d in diag.items()} for k in ("own", "other", "mean")}
  dependence = {"delta_std_ratio": _mean(d["delta_std_ratio"] for d in diag.values()),
                **{f"inbatch_{k}": _mean(v.values()) for k, v in inb.items()},
                "own - other": _json(analysis.paired(inb["own"], inb["other"])),
                "own - mean": _json(analysis.paired(inb["own"], inb["mean"]))}
  return conditioning, dependence


def _task_sets(mode: Mode, runs: dict[str, Any], diagnostics: dict[str, Any], claim: dict[str, Any]) -> dict:
  """The task-shaped-sets ablation at the claim width: endpoints, paired differences, hyperclip's diagnostics."""
  tasks, ep = claim["tasks"], claim["endpoint"]
  ts = {arm: {s: analysis.endpoint(runs[task_sets_name(mode, arm, s)]["top1"], tasks) for s in mode.task_sets_seeds}
        for arm in mode.task_sets_arms}
  pairs = {f"{arm} (task_sets) - {arm}": analysis.paired(ts[arm], ep[arm]) for arm in mode.task_sets_arms}
  if {"siglip", "hyperclip"} <= set(mode.task_sets_arms):
    pairs["hyperclip (task_sets) - siglip (task_sets)"] = analysis.paired(ts["hyperclip"], ts["siglip"])
  out = {"p": mode.task_sets, "seeds": list(mode.task_sets_seeds), "endpoint": ts,
         "paired": {k: _json(p) for k, p in pairs.items()}, "conditioning": {}, "set_dependence": {}}
  for arm in [a for a in mode.task_sets_arms if a in HYPER_ARMS]:
    out["conditioning"][arm], out["set_dependence"][arm] = _conditioning(
        ts[arm], {s: diagnostics[task_sets_name(mode, arm, s)] for s in mode.task_sets_seeds}, tasks)
  return out


def _recalibrated(mode: Mode, runs: dict[str, Any], claim: dict[str, Any]) -> dict:
  """Eval-only rows at the claim width: the primary endpoint with BatchNorm re-estimated, vs. as trained."""
  tasks, ep, seeds = claim["tasks"], claim["endpoint"], claim["seeds"]
  bn = {arm: {s: analysis.endpoint(runs[run_name(arm, mode.claim_width, s)]["recalibrated_bn"], tasks)
              for s in seeds} for arm in mode.recalibrate_arms}
  pairs = {f"{arm} (recalibrated) - {arm}": analysis.paired(bn[arm], ep[arm]) for arm in mode.recalibrate_arms}
  if {"siglip", "hyperclip"} <= set(mode.recalibrate_arms):
    pairs["hyperclip (recalibrated) - siglip (recalibrated)"] = analysis.paired(bn["hyperclip"], bn["siglip"])
  return {"n": mode.recalibrate_bn, "seeds": list(seeds), "endpoint": bn,
          "paired": {k: _json(p) for k, p in pairs.items()}}


def _paired(d: dict[str, Any] | None) -> analysis.Paired | None:
  return None if d is None else analysis.Paired(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _mean(values: Any) -> float | None:
  values = list(values)
  return None if not values or any(v is None for v in values) else float(sum(values) / len(values))


def _json(p: analysis.Paired | None) -> dict[str, Any] | None:
  return None if p is None else p.to_json()


def run_study(mode: Mode, out: str, runs_dir: str, command: str) -> dict[str, Any]:
  """Stages 1-4 (module docstring); writes the four outputs to `out`."""
  import conditioning
  import report
  protocols = report.registered_protocols(os.path.join(out, "results.md"), PROTOCOLS)  # stops early on a mismatch
  t0 = time.perf_counter()
  runner = Runner(mode, runs_dir)
  chance = demo_chance()
  pilots = pilot_specs(mode)
  runner.check(pilots + main_specs(mode, mode.scopes[0]))
  runner.run(pilots)
  selected, excluded = {}, {}
  for spec in pilots:
    if spec.arm == "siglip":
      key = f"{spec.width:g}"
      selected[key], excluded[key] = analysis.select_tasks(runner.runs[spec.name]["top1"], chance, mode.ceiling,
                                                           mode.floor_x_chance)
  scope, scope_scores = choose_scope(mode, runner.runs, selected[f"{mode.claim_width:g}"])
  print(f"reproduce: pilot: tasks {selected}, loss.scope {scope}", file=sys.stderr, flush=True)
  mains = main_specs(mode, scope)
  runner.check(mains)
  runner.run(mains)
  diagnostics = {}
  for spec in [s for s in mains if s.stage in ("main", "task_sets") and s.arm in HYPER_ARMS]:
    print(f"reproduce: diagnostics of {spec.name}", file=sys.stderr, flush=True)
    top1 = runner.runs[spec.name]["top1"]
    diagnostics[spec.name] = conditioning.diagnose(os.path.join(runs_dir, spec.name), list(top1), mode.n_eval,
                                                   mode.diag_sets, mode.inbatch_batches)
    runner.runs[spec.name]["diagnostics"] = diagnostics[spec.name]
  for spec in [s for s in mains if s.stage == "main" and s.arm in mode.recalibrate_arms and mode.recalibrate_bn
               and s.width == mode.claim_width]:
    print(f"reproduce: recalibrated BatchNorm of {spec.name}", file=sys.stderr, flush=True)
    runner.runs[spec.name]["recalibrated_bn"] = conditioning.recalibrated(
        os.path.join(runs_dir, spec.name), list(runner.runs[spec.name]["top1"]), mode.n_eval, mode.recalibrate_bn)
  results = {
      "protocol": {**dataclasses.asdict(mode), "config": "configs/demo.py:variant=<arm>,steps=" + str(mode.steps)
                   + (f",{mode.config_arg}" if mode.config_arg else ""), "min_effect": analysis.MIN_EFFECT,
                   "confidence": analysis.CONFIDENCE},
      "pilot": {"selected_tasks": selected, "excluded_tasks": excluded, "scope": scope,
                "scope_endpoints": scope_scores, "chance": chance},
      "runs": runner.runs,
      "analysis": analyse(mode, runner.runs, diagnostics, selected, scope),
      "analysis_first_protocol": analyse(mode, runner.runs, diagnostics, selected, scope, second=False),
  }
  meta = {"runs": runner.throughput, "study_wall_s": time.perf_counter() - t0, "trained": int(runner.trained),
          "runs_dir": runs_dir, "command": command, "machine": machine(), "commit": commit()}
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out, "throughput.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  report.write_markdown(os.path.join(out, "results.md"), protocols, results, meta)
  report.plot(os.path.join(out, "results.png"), results)
  print(f"reproduce: {results['analysis']['verdict']}: {results['analysis']['reason']}", flush=True)
  print(f"reproduce: wrote {out}/results.md, results.json, results.png, throughput.json", flush=True)
  return results


def machine() -> str:
  import jax
  return (f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} device(s))")


def commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"


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
  import report

  from hyperclip_jax import config as config_lib
  try:
    run_study(mode, args.out, args.runs or os.path.join(args.out, "runs"), command)
  except (config_lib.ConfigError, report.ProtocolError) as e:
    print(f"reproduce: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
