"""An evaluator's settings: config.evals.NAME read against its type's SETTINGS, and the checks every type shares.

A type's SETTINGS map each key to (python type, default); `read` fills in the defaults and rejects unknown keys
and wrong types, the type's own check_settings then calls `check_common` / `check_data` for the shared keys.
Every problem is a one-line ConfigError naming the key.
"""
from __future__ import annotations

from typing import Any

from hyperclip_jax.config import ConfigError
from hyperclip_jax.evaluators import eval_data

Settings = dict[str, tuple[type, Any]]  # key -> (python type, default); data dicts are checked by check_data


def read(name: str, kind: str, raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
  """config.evals.<name> (less its `type`) with defaults filled in; ConfigError on unknown keys or wrong types."""
  raw, out = dict(raw), {}
  for key, (typ, default) in settings.items():
    value = raw.pop(key, default)
    if typ is dict:
      if value is not None and not isinstance(value, dict):
        raise ConfigError(f"config.evals.{name}.{key}={value!r} must be a dict, e.g. dict(name='tfds', ...)")
      value = eval_data.as_dict(value) if value is not None else None
    elif not isinstance(value, typ) or isinstance(value, bool):
      raise ConfigError(f"config.evals.{name}.{key}={value!r} must be a {typ.__name__}")
    out[key] = value
  if raw:
    raise ConfigError(f"config.evals.{name}.{sorted(raw)[0]} is unknown for type {kind!r}; known: "
                      f"{', '.join(['type', *settings])}")
  return out


def check_common(where: str, s: dict[str, Any]) -> None:
  """Counts and sizes, for whichever of them the type has."""
  for key in ("batch_size", "num_pairs", "n_train", "condition_sets"):
    if key in s and s[key] < 1:
      raise ConfigError(f"{where}.{key}={s[key]} must be at least 1")
  if s.get("n_eval", 0) < 0:
    raise ConfigError(f"{where}.n_eval={s['n_eval']} must be >= 0 (0: the whole split)")
  if s.get("workers", 0) < 0:
    raise ConfigError(f"{where}.workers={s['workers']} must be >= 0 (0: decode in this process)")


def require_data(where: str, s: dict[str, Any]) -> None:
  if s["data"] is None:
    raise ConfigError(f"{where}.data is missing; e.g. dict(name='tfds', dataset='cifar10', split='test')")


def check_data(where: str, s: dict[str, Any]) -> None:
  """The data spec, and train_data merged over it where the type has one (eval_data.check)."""
  for key in ("data", "train_data"):
    if s.get(key) is not None and (key == "data" or s[key]):
      data = {**s["data"], **s[key]} if key == "train_data" else s[key]
      problem = eval_data.check(data, f"{where}.{key}")
      if problem:
        raise ConfigError(problem)


def uses_demo(s: dict[str, Any]) -> bool:
  """Whether the evaluator reads the procedural demo data (a demo task preset or data=dict(name='demo'))."""
  return (any(t.strip().split(":")[0] == "demo" for t in s.get("tasks", "").split(","))
          or (s.get("data") or {}).get("name") == "demo")


def task_name(name: str, kind: str) -> str:
  """The metric's <task> of config.evals.<name>: the name less a leading '<type>_' (zeroshot_cifar100 -> cifar100)."""
  return name[len(kind) + 1:] if name.startswith(kind + "_") and len(name) > len(kind) + 1 else name
