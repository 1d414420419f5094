"""The evaluator registry: a type registered in evaluators.TYPES is read, checked, built, run and reported
through its own module alone (docs/evaluation.md, "Adding an evaluator type")."""
import types

import ml_collections
import pytest

from hyperclip_jax import config as config_lib
from hyperclip_jax import evaluators
from hyperclip_jax.evaluators import settings


class _Scorer:
  def __init__(self, task: str, n: int):
    self.task, self.n = task, n

  def run(self, params, batch_stats):
    return {self.task: {"score": params * self.n, "count": self.n}}


def _fake_type() -> types.ModuleType:
  """What a new evaluator module provides, nothing more."""
  m = types.ModuleType("fake")
  m.SETTINGS = {"n": (int, 3), "batch_size": (int, 8)}
  m.BARE_KEYS = False

  def check_settings(where, s):
    settings.check_common(where, s)
    if s["n"] > 10:
      raise config_lib.ConfigError(f"{where}.n={s['n']} is above 10")

  def build(config, model, tokenizer, mesh, name, s):
    task = settings.task_name(name, "fake")
    return _Scorer(task, s["n"]), [task]

  m.check_settings, m.build = check_settings, build
  m.flat_metrics = lambda results: {f"fake/{t}/score": r["score"] for t, r in results.items()}
  m.format_lines = lambda results: [f"fake {t}: {r['score']:.1f} ({r['count']})" for t, r in results.items()]
  return m


def _config(**evals):
  return ml_collections.ConfigDict({"evals": evals})


def test_a_registered_type_is_built_run_and_reported(monkeypatch):
  monkeypatch.setitem(evaluators.TYPES, "fake", _fake_type())
  built = evaluators.build(_config(fake=dict(n=4), fake_b=dict(type="fake")), None, None, None)
  results = built.run(0.5, None)
  assert results == {"fake/fake": {"score": 2.0, "count": 4}, "fake/b": {"score": 1.5, "count": 3}}
  assert evaluators.Evaluators.flat_metrics(results) == {"fake/fake/score": 2.0, "fake/b/score": 1.5}
  assert evaluators.format_table(results) == "fake fake: 2.0 (4)\nfake b: 1.5 (3)"
  # next to a zero-shot result (kept under its bare task name), each type reads only its own keys
  mixed = {"colour": {"top1": 0.5, "top5": 1.0, "chance": 0.125, "num_classes": 8, "num_images": 16}, **results}
  assert evaluators.Evaluators.flat_metrics(mixed) == {
      "zeroshot/colour/top1": 0.5, "zeroshot/colour/top5": 1.0, "fake/fake/score": 2.0, "fake/b/score": 1.5}
  assert evaluators.format_table(mixed).splitlines()[-2:] == ["fake fake: 2.0 (4)", "fake b: 1.5 (3)"]


@pytest.mark.parametrize("evals, message", [
    (dict(fake=dict(n=11)), r"^config.evals.fake.n=11 is above 10$"),
    (dict(fake=dict(batch_size=0)), r"^config.evals.fake.batch_size=0 must be at least 1$"),
    (dict(fake=dict(m=1)), r"^config.evals.fake.m is unknown for type 'fake'; known: type, n, batch_size$"),
    (dict(fake=dict(n="4")), r"^config.evals.fake.n='4' must be a int$"),
    (dict(mine=dict(n=1)), r"^config.evals.mine has no type; .* one of: zeroshot, retrieval, linear_probe, fake$"),
    (dict(fake=dict(), fake_fake=dict(type="fake")), r"config.evals.fake_fake and config.evals.fake both give "
                                                      r"fake/fake/\.\.\.; rename one"),
])
def test_a_registered_type_checks_its_settings(monkeypatch, evals, message):
  monkeypatch.setitem(evaluators.TYPES, "fake", _fake_type())
  with pytest.raises(config_lib.ConfigError, match=message):
    evaluators.build(_config(**evals), None, None, None)


def test_every_shipped_type_has_the_module_interface():
  for kind, module in evaluators.TYPES.items():
    assert isinstance(module.SETTINGS, dict) and isinstance(module.BARE_KEYS, bool), kind
    for fn in ("check_settings", "build", "flat_metrics", "format_lines"):
      assert callable(getattr(module, fn)), (kind, fn)
  assert [k for k, m in evaluators.TYPES.items() if m.BARE_KEYS] == ["zeroshot"]
