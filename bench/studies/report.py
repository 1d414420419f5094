"""results.md and results.png of bench/studies/reproduce.py, from results.json and throughput.json's contents.

results.md leads with the verdict (one paragraph), then the pre-registered protocol sections exactly as the file
held them before the run (registered_protocols), then the tables. results.png is the one figure of the effect.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

PROTOCOL_RE = re.compile(r"^## Protocol[^\n]*\(pre-registered[^\n]*\n.*?(?=^## |\Z)", re.S | re.M)


class ProtocolError(ValueError):
  """A registered protocol in results.md is not the one the script runs."""


def registered_protocols(path: str, protocols: Sequence[str]) -> list[str]:
  """The protocol sections to write: `protocols` (the script's, in order), once every section `path` holds is the
  script's, verbatim and in the same order. A file may hold fewer (a later protocol registers on its first run).

  A registered section that differs from the script's is an error: the protocol changed after it was registered.
  A changed protocol is a new section with a new heading; the old one stays.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    return list(protocols)
  found = [m.group(0).strip() for m in PROTOCOL_RE.finditer(text)]
  for i, section in enumerate(found):
    if i >= len(protocols) or section != protocols[i].strip():
      heading = section.splitlines()[0]
      raise ProtocolError(f"{path} holds a registered protocol ({heading!r}) that differs from "
                          "bench/studies/reproduce.py's PROTOCOLS: restore the script's text (a changed protocol "
                          "is a new, dated section)")
  return list(protocols)  # the same texts (the file's copies may carry blank lines before the next section)


def _f(x: float | None, digits: int = 3) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def _pts(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:+.1f}"


def _interval(p: dict[str, Any] | None) -> str:
  if p is None:
    return "n/a"
  if p["lo"] is None:
    return f"{_pts(p['mean'])} (n={len(p['diffs'])}: no interval)"
  return f"{_pts(p['mean'])} [{_pts(p['lo'])}, {_pts(p['hi'])}]"


def verdict_paragraph(results: dict[str, Any]) -> str:
  proto, an = results["protocol"], results["analysis"]
  claim = f"{proto['claim_width']:g}"
  w = an["widths"][claim]
  text = (f"**Verdict: {an['verdict']}.** At encoder width {claim} ({len(w['seeds'])} seeds; primary endpoint: "
          f"mean zero-shot top-1 over {', '.join(w['tasks']) or 'no task'}), {an['reason']}.")
  others = [k for k in an["widths"] if k != claim]
  for k in others:
    text += (f" At width {k} (not in the verdict): hyperclip - siglip = "
             f"{_interval(an['widths'][k]['paired']['hyperclip - siglip'])} points.")
  dep = w["set_dependence"].get("hyperclip")
  cond = w["conditioning"].get("hyperclip")
  if dep and cond:
    text += (f" Conditioning diagnostics of hyperclip at width {claim}: the generated Δ varies across training "
             f"caption sets by {_f(dep['delta_std_ratio'], 2)} of its RMS; in-batch image->text top-1 "
             f"{_f(dep['inbatch_own'])} with each group's own set, {_f(dep['inbatch_other'])} with another group's, "
             f"{_f(dep['inbatch_mean'])} with the mean; zero-shot {_f(cond['classes']['mean'])} conditioned on the "
             f"task's classes, {_f(cond['wrong_task']['mean'])} on another task's, "
             f"{_f(cond['train_sets_mean']['mean'])} on the mean of training sets "
             f"(set dependence {'shown' if an['set_dependence_shown'] else 'not shown'} by its "
             f"{an['set_dependence_rule']} rule: classes - wrong_task {_interval(cond['classes - wrong_task'])}, "
             f"own - other set {_interval(dep['own - other'])} points).")
  first = results.get("analysis_first_protocol")
  if first:
    text += (f" Under the first protocol (seeds {', '.join(map(str, proto['seeds']))}, set dependence by means) "
             f"the verdict is *{first['verdict']}*.")
  if proto["name"] != "full":
    text += (f" This is the `{proto['name']}` mode, a check of the harness with settings other than the "
             "protocol's: its verdict says nothing about the claim; `make reproduce` runs the full study.")
  return text


def first_outcome(results: dict[str, Any]) -> list[str]:
  """The section after the first protocol: its verdict, recomputed on its seeds under its own rule."""
  first = results["analysis_first_protocol"]
  lines = ["## Outcome of the first protocol", "",
           f"Recomputed on this run's seeds {', '.join(map(str, results['protocol']['seeds']))} under the first "
           f"protocol's rule: **{first['verdict']}**. {first['reason']}.", "",
           "| width | difference | per seed | mean [95% interval] |", "|---|---|---|---|"]
  for w, wa in first["widths"].items():
    for name, p in wa["paired"].items():
      lines.append(f"| {w} | {name} | {_per_seed(p)} | {_interval(p)} |")
  dep, cond = (first["widths"][f"{results['protocol']['claim_width']:g}"][k].get("hyperclip")
               for k in ("set_dependence", "conditioning"))
  if dep and cond:
    lines += ["", f"Set dependence {'shown' if first['set_dependence_shown'] else 'not shown'} (means > 0): "
              f"classes - wrong_task {_interval(cond['classes - wrong_task'])}, own - other set "
              f"{_interval(dep['own - other'])} points."]
  return lines + [""]


def _per_seed(p: dict[str, Any] | None) -> str:
  return "n/a" if p is None else ", ".join(_pts(d) for d in p["diffs"])


def write_markdown(path: str, protocols: Sequence[str], results: dict[str, Any], meta: dict[str, Any]) -> None:
  proto, pilot, an, runs = results["protocol"], results["pilot"], results["analysis"], results["runs"]
  arms = proto["arms"]
  seeds = sorted({s for wa in an["widths"].values() for s in wa["seeds"]})
  lines = [
      "# Does HyperCLIP help? HyperCLIP vs. SigLIP and capacity controls over encoder width (demo data)", "",
      "Generated by `bench/studies/reproduce.py`; do not edit by hand (the protocol sections are kept verbatim "
      "from before the run). Every number is read from the runs' own `metrics.jsonl` and checkpoints "
      f"(`{meta['runs_dir']}/<name>/`; per-run values in `results.json`).", "",
      "## Verdict", "", verdict_paragraph(results), "",
      protocols[0].rstrip("\n"), "", *(first_outcome(results) if len(protocols) > 1 else []),
      *[p.rstrip("\n") + "\n" for p in protocols[1:]],
      "## This run", "",
      f"- Command: `{meta['command']}` (`{proto['name']}` mode)",
      f"- Config: `{proto['config']}`, `model.image.width_mult` in {', '.join(f'{w:g}' for w in proto['widths'])}, "
      f"{proto['steps']} steps ({proto['warmup_steps']} of warmup), `loss.name=sigmoid`; zero-shot on "
      f"{proto['n_eval']} images per task at the end; seeds {', '.join(map(str, proto['seeds']))} (at width "
      f"{proto['claim_width']:g} also {', '.join(map(str, proto['extra_seeds'])) or 'none'}); pilot seed "
      f"{proto['pilot_seed']}; arms {', '.join(arms)}",
      f"- Machine: {meta['machine']}; commit {meta['commit']}",
      f"- Wall time of the study: {meta['study_wall_s'] / 60:.1f} min ({meta['trained']} runs trained, the rest "
      "read back from their workdirs)", "",
      "## Pilot (seed " + str(proto["pilot_seed"]) + ")", "",
      "| width | task | chance | siglip pilot top-1 | primary endpoint |", "|---|---|---:|---:|---|"]
  chance = pilot["chance"]
  for w, kept in pilot["selected_tasks"].items():
    name = next(n for n, r in runs.items() if r["stage"] == "pilot" and r["arm"] == "siglip" and f"{r['width']:g}" == w)
    for task, top1 in runs[name]["top1"].items():
      why = "in" if task in kept else f"out ({pilot['excluded_tasks'][w][task]})"
      lines.append(f"| {w} | {task} | {chance[task]:.3f} | {top1:.3f} | {why} |")
  if pilot["scope_endpoints"]:
    lines += ["", f"loss.scope (hyperclip at width {proto['claim_width']:g}, pilot primary endpoint): "
              + ", ".join(f"`{sc}` {_f(v)}" for sc, v in pilot["scope_endpoints"].items())
              + f" -> every arm with a hypernetwork trains with `{pilot['scope']}`."]
  else:
    lines += ["", f"loss.scope: `{pilot['scope']}` (this mode has no scope pilot)."]

  lines += ["", "## Primary endpoint per seed", "",
            "| width | arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
            "|---|---|" + "---:|" * (len(seeds) + 1)]
  for w, wa in an["widths"].items():
    for arm in arms:
      vals = [wa["endpoint"][arm].get(s, wa["endpoint"][arm].get(str(s))) for s in seeds]
      got = [v for s, v in zip(seeds, vals) if s in wa["seeds"]]
      mean = None if any(v is None for v in got) else sum(got) / len(got)
      lines.append(f"| {w} | {arm} | " + " | ".join(_f(v) if s in wa["seeds"] else "-" for s, v in zip(seeds, vals))
                   + f" | {_f(mean)} |")

  lines += ["", "## Paired differences (per seed; mean and 95% t-interval, points)", "",
            "| width | difference | per seed | mean [95% interval] |", "|---|---|---|---|"]
  for w, wa in an["widths"].items():
    for name, p in wa["paired"].items():
      per = "n/a" if p is None else ", ".join(_pts(d) for d in p["diffs"])
      lines.append(f"| {w} | {name} | {per} | {_interval(p)} |")
    for key in [k for k in wa if k.startswith("scope_")]:
      for name, p in wa[key].items():
        if name != "endpoint":
          lines.append(f"| {w} | {name} (loss-scope ablation) | "
                       + ("n/a" if p is None else ", ".join(_pts(d) for d in p["diffs"])) + f" | {_interval(p)} |")

  tasks = sorted({t for r in runs.values() for t in r["top1"]})
  lines += ["", "## Zero-shot top-1 per task (mean over seeds; * = in the primary endpoint)", "",
            "| width | task | chance | " + " | ".join(arms) + " |", "|---|---|---:|" + "---:|" * len(arms)]
  for w, wa in an["widths"].items():
    for task in tasks:
      cells = []
      for arm in arms:
        vals = [runs[n]["top1"][task] for n, r in runs.items() if r["stage"] == "main" and r["arm"] == arm
                and f"{r['width']:g}" == w]
        cells.append(_f(sum(vals) / len(vals)))
      lines.append(f"| {w} | {task}{' *' if task in wa['tasks'] else ''} | {chance[task]:.3f} | "
                   + " | ".join(cells) + " |")

  lines += ["", "## Test-time conditioning (eval only, on the trained checkpoints; primary endpoint, mean over "
            "seeds)", "",
            "`classes`: each task's own class prompts (the training runs' evaluation); `wrong_task`: the class "
            "prompts of the next demo task (colour -> shape -> colour_shape -> position -> size_position -> texture "
            "-> heldout_colour_shape -> colour), scored against the task's own classes; `train_sets_mean`: the Δ "
            f"averaged over {proto['diag_sets']} sets of training captions.", "",
            "| width | arm | classes | wrong_task | train_sets_mean | classes - wrong_task (points) |",
            "|---|---|---:|---:|---:|---|"]
  for w, wa in an["widths"].items():
    for arm, c in wa["conditioning"].items():
      lines.append(f"| {w} | {arm} | {_f(c['classes']['mean'])} | {_f(c['wrong_task']['mean'])} | "
                   f"{_f(c['train_sets_mean']['mean'])} | {_interval(c['classes - wrong_task'])} |")

  lines += ["", "## Set dependence (mean over seeds)", "",
            f"Δ spread: RMS over generated values of (Δ - its mean over {proto['diag_sets']} training caption sets) "
            "/ RMS of Δ (0: the same Δ for every set). In-batch: image->text top-1 among the "
            "batch's captions on held-out training pairs, each group's images given the Δ of its own captions, of "
            "the next group's, or the mean Δ over the batch's groups.", "",
            "| width | arm | Δ spread | in-batch own | other set | mean of sets | own - other (points) |",
            "|---|---|---:|---:|---:|---:|---|"]
  for w, wa in an["widths"].items():
    for arm, d in wa["set_dependence"].items():
      lines.append(f"| {w} | {arm} | {_f(d['delta_std_ratio'])} | {_f(d['inbatch_own'])} | "
                   f"{_f(d['inbatch_other'])} | {_f(d['inbatch_mean'])} | {_interval(d['own - other'])} |")

  lines += extra_tables(results)
  lines += ["", "## Throughput (median training images/s per run, mean over seeds)", "",
            "| width | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
  for w in an["widths"]:
    cells = []
    for arm in arms:
      ips = [meta["runs"][n]["images_per_sec"] for n, r in runs.items() if r["stage"] == "main" and r["arm"] == arm
             and f"{r['width']:g}" == w and meta["runs"][n]["images_per_sec"] is not None]
      cells.append(f"{sum(ips) / len(ips):.1f}" if ips else "n/a")
    lines.append(f"| {w} | " + " | ".join(cells) + " |")
  lines += ["", "Timings are of this machine under whatever load it had; they live in `throughput.json`, so that "
            "`results.json` is identical across reruns.", "",
            "![hyperclip - siglip vs. encoder width](results.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def extra_tables(results: dict[str, Any]) -> list[str]:
  """The second protocol's ablation and eval-only rows: task-shaped training sets, recalibrated BatchNorm."""
  an, proto, lines = results["analysis"], results["protocol"], []
  claim = f"{proto['claim_width']:g}"
  ts = an.get("task_sets")
  if ts:
    lines += ["", f"## Task-shaped training sets (ablation at width {claim}, `data.task_sets={ts['p']:g}`, seeds "
              f"{', '.join(map(str, ts['seeds']))}; primary endpoint)", "", *_seed_tables(ts, "task_sets")]
    for arm, c in ts["conditioning"].items():
      d = ts["set_dependence"][arm]
      lines += ["", f"{arm} (task_sets) conditioning diagnostics: Δ spread {_f(d['delta_std_ratio'])}; in-batch own "
                f"{_f(d['inbatch_own'])}, other set {_f(d['inbatch_other'])}, mean of sets {_f(d['inbatch_mean'])} "
                f"(own - other {_interval(d['own - other'])} points); zero-shot classes {_f(c['classes']['mean'])}, "
                f"wrong_task {_f(c['wrong_task']['mean'])}, train_sets_mean {_f(c['train_sets_mean']['mean'])} "
                f"(classes - wrong_task {_interval(c['classes - wrong_task'])} points)."]
  bn = an.get("recalibrated_bn")
  if bn:
    lines += ["", f"## Recalibrated BatchNorm (eval only, width {claim}, {bn['n']} held-out training images per "
              "task; primary endpoint)", "", *_seed_tables(bn, "recalibrated")]
  return lines


def _seed_tables(section: dict[str, Any], tag: str) -> list[str]:
  """A section's primary endpoint per arm and seed ("<arm> (<tag>)" rows), then its paired differences."""
  seeds = section["seeds"]
  lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---:|" * (len(seeds) + 1)]
  for arm, ep in section["endpoint"].items():
    vals = [ep.get(s, ep.get(str(s))) for s in seeds]
    lines.append(f"| {arm} ({tag}) | " + " | ".join(_f(v) for v in vals) + f" | {_f(_avg(vals))} |")
  lines += ["", "| difference | per seed | mean [95% interval] (points) |", "|---|---|---|"]
  return lines + [f"| {name} | {_per_seed(p)} | {_interval(p)} |" for name, p in section["paired"].items()]


def _avg(vals: list[float | None]) -> float | None:
  return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)


def plot(path: str, results: dict[str, Any]) -> None:
  """The effect: hyperclip - siglip paired difference per seed, mean and 95% interval, against encoder width."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  an, proto = results["analysis"], results["protocol"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for w, wa in an["widths"].items():
    p = wa["paired"]["hyperclip - siglip"]
    if p is None:
      continue
    x = float(w)
    span = 0.04 * (max(proto["widths"]) - min(proto["widths"]) or 1.0)  # seeds side by side, left of the mean
    xs = [x - span * (i + 1) / len(p["diffs"]) for i in range(len(p["diffs"]))]
    ax.scatter(xs, [100 * d for d in p["diffs"]], color="tab:grey", s=14, zorder=2,
               label="per seed" if x == proto["widths"][0] else None)
    if p["lo"] is not None:
      ax.errorbar([x], [100 * p["mean"]], yerr=[[100 * (p["mean"] - p["lo"])], [100 * (p["hi"] - p["mean"])]],
                  fmt="o", color="tab:red", capsize=5, zorder=3,
                  label="mean, 95% t-interval" if x == proto["widths"][0] else None)
    else:
      ax.scatter([x], [100 * p["mean"]], color="tab:red", zorder=3)
  ax.axhline(0, color="black", lw=0.8)
  ax.axhline(100 * proto["min_effect"], color="grey", ls="--", lw=0.8, label="minimal effect")
  ax.set_xlabel("image encoder width_mult")
  ax.set_ylabel("hyperclip - siglip (points)")
  ax.set_xticks([float(w) for w in an["widths"]])
  ax.set_title(f"Primary endpoint, paired by seed ({proto['name']} mode)", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
