"""Configs as code, big_vision style: `--config FILE[:ARG]` plus `--config.a.b=value` overrides.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Overrides may only set keys
the config already has, with a value of the same type. validation.py then checks the values against the
package (unknown names, a batch that does not split into devices x set_size). Every problem is a `ConfigError`
with a one-line message naming the key, raised before anything compiles. This module imports nothing of the
package: every other module may import it.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections


class ConfigError(ValueError):
  """A user-facing configuration problem; the message is one line saying what to change."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config file's `key=value,key2=value2` argument, typed by the given defaults."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"config argument {item!r} is not key=value; known keys: {', '.join(defaults)}")
    if key not in defaults:
      raise ConfigError(f"config argument {key!r} is unknown; known: {', '.join(defaults)}")
    out[key] = _parse_value(raw, defaults[key], f"config argument {key}")
  return ml_collections.ConfigDict(out)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist; pass e.g. --config configs/demo.py")
  module_spec = importlib.util.spec_from_file_location(f"_hyperclip_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}")
  return config


def _parse_value(raw: str, current: Any, name: str) -> Any:
  """Parses an override string into the type of the value it replaces."""
  if isinstance(current, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"{name}={raw!r} is not a bool; use true or false")
  if isinstance(current, str) or current is None:
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ConfigError(f"{name}={raw!r} is not a valid {type(current).__name__}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(current)(value)
  if type(value) is not type(current):
    raise ConfigError(f"{name}={raw!r} has type {type(value).__name__}, expected {type(current).__name__}")
  return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, raw: str) -> None:
  """Sets config.<dotted> = raw (parsed to the existing value's type); the key must already exist."""
  keys = dotted.split(".")
  node = config
  for i, key in enumerate(keys):
    here = "config." + ".".join(keys[:i + 1])
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      parent = "config" + "".join("." + k for k in keys[:i])
      known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "(not a dict)"
      raise ConfigError(f"{here} is unknown; keys of {parent}: {known}")
    if i < len(keys) - 1:
      node = node[key]
  with node.unlocked():
    node[keys[-1]] = _parse_value(raw, node[keys[-1]], "config." + dotted)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other command-line arguments."""
  rest, overrides = [], []
  it = iter(argv)
  for a in it:
    if a.startswith("--config."):
      key, sep, value = a[len("--config."):].partition("=")
      if not sep:
        value = next(it, None)
        if value is None:
          raise ConfigError(f"--config.{key} needs a value: --config.{key}=VALUE")
      overrides.append((key, value))
    else:
      rest.append(a)
  return rest, overrides


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def model_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config entries a checkpoint's model was built with (shapes and numerics): resume needs the same."""
  data = {k: config.data[k] for k in ("image_size", "max_len", "tokenizer")}
  # remat changes memory and conv_impl the lowering, not the parameters: a run may resume under either
  model = {k: v for k, v in config.model.to_dict().items() if k not in ("remat", "conv_impl")}
  if model["variant"] not in ("linear", "conv"):  # the variants that read hyper_rank (models/lowrank.py)
    model.pop("hyper_rank", None)  # unused there: runs saved before the key existed still resume
  return json.loads(json.dumps({"model": model, "data": data}, sort_keys=True, default=str))
