"""The pre-registered analysis of bench/studies/reproduce.py: task selection, paired differences, the verdict.

Pure functions over numbers (no JAX), so that tests can feed them hand-made values:
  select_tasks   which demo tasks enter the primary endpoint (siglip's pilot: not at ceiling, not at floor)
  endpoint       the primary endpoint of one run: mean zero-shot top-1 over the selected tasks
  paired         per-seed paired differences a - b: mean, sample std, and a two-sided t-interval
  decide         the verdict rule: reproduced / not reproduced / inconclusive (add seeds)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

CEILING = 0.95  # a task whose siglip pilot top-1 is >= this is at ceiling: excluded
FLOOR_X_CHANCE = 1.2  # a task whose siglip pilot top-1 is < this x chance is at floor: excluded
MIN_EFFECT = 0.01  # the smallest effect worth claiming: +1 point of the primary endpoint
CONFIDENCE = 0.95  # the t-intervals' coverage

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive (add seeds)"


def select_tasks(pilot_top1: Mapping[str, float], chance: Mapping[str, float], ceiling: float = CEILING,
                 floor_x_chance: float = FLOOR_X_CHANCE) -> tuple[list[str], dict[str, str]]:
  """-> (kept tasks in pilot order, {excluded task: why}) by the rule applied to siglip's pilot top-1."""
  kept, excluded = [], {}
  for task, top1 in pilot_top1.items():
    if top1 >= ceiling:
      excluded[task] = f"ceiling: {top1:.3f} >= {ceiling:g}"
    elif top1 < floor_x_chance * chance[task]:
      excluded[task] = f"floor: {top1:.3f} < {floor_x_chance:g} x chance {chance[task]:.3f}"
    else:
      kept.append(task)
  return kept, excluded


def endpoint(top1: Mapping[str, float], tasks: Sequence[str]) -> float | None:
  """Mean top-1 over `tasks` (None when no task is selected: the endpoint is undefined)."""
  return sum(top1[t] for t in tasks) / len(tasks) if tasks else None


def t_quantile(p: float, df: int) -> float:
  """Student's t quantile (scipy.stats.t.ppf)."""
  from scipy import stats
  return float(stats.t.ppf(p, df))


@dataclasses.dataclass(frozen=True)
class Paired:
  """Per-seed paired differences a - b over the seeds both have."""
  seeds: tuple[int, ...]
  diffs: tuple[float, ...]
  mean: float
  std: float  # sample std (ddof=1); 0 for one seed
  lo: float | None  # the CONFIDENCE t-interval of the mean; None for fewer than two seeds
  hi: float | None

  @property
  def n(self) -> int:
    return len(self.diffs)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def paired(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Paired | None:
  """Paired differences a[seed] - b[seed] over the common seeds (a seed fixes init and data order for every
  arm); None when no seed is common or a value is undefined."""
  seeds = tuple(sorted(set(a) & set(b)))
  if not seeds or any(a[s] is None or b[s] is None for s in seeds):
    return None
  diffs = tuple(float(a[s] - b[s]) for s in seeds)
  n = len(diffs)
  mean = sum(diffs) / n
  if n < 2:
    return Paired(seeds, diffs, mean, 0.0, None, None)
  std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
  half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
  return Paired(seeds, diffs, mean, std, mean - half, mean + half)


@dataclasses.dataclass(frozen=True)
class SetDependence:
  """The conditioning diagnostics of hyperclip at the claim width: per-seed paired differences."""
  zeroshot_classes_minus_wrong: Paired | None  # primary endpoint conditioned on the classes - on another task's
  inbatch_own_minus_other: Paired | None  # in-batch image->text top-1 with the own set's Δ - another group's Δ
  rule: str = "mean"  # "mean": both means > 0 (the first protocol); "interval": both t-intervals above 0

  @property
  def shown(self) -> bool:
    both = (self.zeroshot_classes_minus_wrong, self.inbatch_own_minus_other)
    if any(p is None for p in both):
      return False
    if self.rule == "interval":
      return all(p.lo is not None and p.lo > 0 for p in both)
    return all(p.mean > 0 for p in both)


def decide(vs_siglip: Paired | None, vs_controls: Mapping[str, Paired | None], set_dependence: SetDependence,
           min_effect: float = MIN_EFFECT) -> tuple[str, str]:
  """-> (verdict, the reason in one sentence) by the pre-registered rule (docs/results.md, Protocol):

  reproduced      the interval of hyperclip - siglip lies above 0, hyperclip's mean paired difference to every
                  control arm is > 0, and the diagnostics show set dependence (SetDependence.shown);
  not reproduced  the interval's upper bound is below min_effect; or the interval lies above 0 but a control
                  matches or beats hyperclip, or the diagnostics show no set dependence (a gain, not from the
                  text conditioning);
  inconclusive    otherwise (also: fewer than two seeds, an undefined endpoint).
  """
  pts = lambda x: f"{100 * x:+.1f}"
  if vs_siglip is None or vs_siglip.lo is None:
    return INCONCLUSIVE, "fewer than two paired seeds or no selected task: no interval of hyperclip - siglip"
  interval = (f"hyperclip - siglip = {pts(vs_siglip.mean)} points, {CONFIDENCE:.0%} interval "
              f"[{pts(vs_siglip.lo)}, {pts(vs_siglip.hi)}] over {vs_siglip.n} seeds")
  if vs_siglip.hi < min_effect:
    return NOT_REPRODUCED, f"{interval}: its upper bound is below the minimal effect {pts(min_effect)} points"
  if vs_siglip.lo > 0:
    failed = [f"{arm} (hyperclip - {arm} = {'n/a' if p is None else pts(p.mean)} points)"
              for arm, p in vs_controls.items() if p is None or p.mean <= 0]
    if not set_dependence.shown:
      failed.append("set dependence (classes - wrong_task = "
                    f"{_maybe(set_dependence.zeroshot_classes_minus_wrong)}, own - other set in-batch = "
                    f"{_maybe(set_dependence.inbatch_own_minus_other)} points; rule: {set_dependence.rule})")
    if failed:
      return NOT_REPRODUCED, f"{interval}, but not from the text conditioning: fails on {'; '.join(failed)}"
    return REPRODUCED, (f"{interval}; hyperclip beats {', '.join(vs_controls) or 'no control'} and its "
                        "conditioning diagnostics show set dependence")
  return INCONCLUSIVE, f"{interval}: it contains 0 and reaches above the minimal effect {pts(min_effect)} points"


def _maybe(p: Paired | None) -> str:
  if p is None:
    return "n/a"
  return f"{100 * p.mean:+.1f}" + ("" if p.lo is None else f" [{100 * p.lo:+.1f}, {100 * p.hi:+.1f}]")
