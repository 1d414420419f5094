"""Configs as code, big_vision style: `--config FILE[:ARG]` plus `--config.a.b=value` overrides.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Overrides may only set keys
the config already has, with a value of the same type; `validate` then checks values that are impossible
(unknown names, a batch that does not split into devices x set_size). Every problem is a `ConfigError`
with a one-line message naming the key, raised before anything compiles.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

VARIANTS = ("siglip", "hyperclip", "token", "linear", "conv")  # linear, conv: models/lowrank.py
LOWRANK_VARIANTS = ("linear", "conv")  # the variants that read config.model.hyper_rank
LOSSES = ("sigmoid", "softmax")
LOSS_SCOPES = ("batch", "group")  # losses.SCOPES
DTYPES = ("float32", "bfloat16", "float16")
RESUME_MODES = ("auto", "fresh")  # fresh moves existing checkpoints to WORKDIR/checkpoints_previous


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


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks values that no override type check can catch; raises ConfigError naming the key."""
  from hyperclip_jax.models import image_encoder_names  # late: models import jax
  m = config.model
  if m.variant not in VARIANTS:
    raise ConfigError(f"config.model.variant={m.variant!r} is unknown; known: {', '.join(VARIANTS)}")
  if m.image.name not in image_encoder_names():
    raise ConfigError(f"config.model.image.name={m.image.name!r} is unknown; known: {', '.join(image_encoder_names())}")
  if config.loss.name not in LOSSES:
    raise ConfigError(f"config.loss.name={config.loss.name!r} is unknown; known: {', '.join(LOSSES)}")
  if config.loss.get("scope", "batch") not in LOSS_SCOPES:
    raise ConfigError(f"config.loss.scope={config.loss.scope!r} is unknown; known: {', '.join(LOSS_SCOPES)}")
  rank = m.get("hyper_rank", 32)
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
    raise ConfigError(f"config.model.hyper_rank={rank!r} must be a positive int (the rank of linear/conv updates)")
  for key in ("total_steps", "batch_size", "model.hyper.set_size", "model.embed_dim", "data.image_size"):
    value = config
    for k in key.split("."):
      value = value[k]
    if value <= 0:
      raise ConfigError(f"config.{key}={value} must be positive")
  s = m.hyper.set_size
  if config.batch_size % s:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by config.model.hyper.set_size={s}")
  groups = config.batch_size // s
  if groups % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} gives {groups} groups of set_size={s}, not divisible by "
        f"{num_devices} devices; use a batch_size that is a multiple of {num_devices * s}")
  if config.data.image_size < 32:
    raise ConfigError(f"config.data.image_size={config.data.image_size} is below the encoders' minimum of 32")
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    value = config
    for k in key.split("."):
      value = value[k]
    if value < 1:
      raise ConfigError(f"config.{key}={value} must be at least 1")
  for key in ("eval_every_steps", "checkpoint_every_secs"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]} must be >= 0 (0 = off)")
  if config.get("resume", "auto") not in RESUME_MODES:
    raise ConfigError(f"config.resume={config.resume!r} is unknown; known: {', '.join(RESUME_MODES)}")
  if not isinstance(config.get("skip_nonfinite_steps", False), bool):
    raise ConfigError(f"config.skip_nonfinite_steps={config.skip_nonfinite_steps!r} must be true or false")
  if m.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={m.dtype!r} is unknown; known: {', '.join(DTYPES)}")
  from hyperclip_jax import evaluators  # late: evaluators import jax
  evaluators.validate(config)  # config.evals: types, keys, data specs (no data is opened)
  _validate_scale_out(config, num_devices, groups)
  _check_text_pooling(config)
  if config.optim.schedule.warmup_steps > config.total_steps:
    raise ConfigError(
        f"config.optim.schedule.warmup_steps={config.optim.schedule.warmup_steps} exceeds "
        f"config.total_steps={config.total_steps}")


def _validate_scale_out(config: ml_collections.ConfigDict, num_devices: int, groups: int) -> None:
  """Loss chunking, gradient accumulation, remat, partition rules and the distributed setup.

  Each key is optional here (a run's config.json from before these keys existed still validates).
  """
  chunked = config.loss.get("chunked", False)
  if not isinstance(chunked, bool):
    raise ConfigError(f"config.loss.chunked={chunked!r} must be true or false")
  if chunked and config.loss.name != "sigmoid":
    raise ConfigError(f"config.loss.chunked=true needs config.loss.name='sigmoid', got {config.loss.name!r}")
  remat = config.model.get("remat", False)
  if not isinstance(remat, bool):
    raise ConfigError(f"config.model.remat={remat!r} must be true or false")
  from hyperclip_jax.models.layers import CONV_IMPLS  # late: models import jax
  conv_impl = config.model.get("conv_impl", "auto")
  if conv_impl not in CONV_IMPLS:
    raise ConfigError(f"config.model.conv_impl={conv_impl!r} is unknown; known: {', '.join(CONV_IMPLS)} "
                      "(auto: cpu_fast on CPU, native on GPU/TPU)")
  k = config.get("accum_steps", 1)
  if k < 1:
    raise ConfigError(f"config.accum_steps={k} must be at least 1")
  if k > 1 and config.model.image.get("bn_stats", "group") == "global":
    raise ConfigError(
        f"config.accum_steps={k} with config.model.image.bn_stats='global': GradCache is exact only with per-group "
        "BatchNorm statistics (a micro-batch cannot see the whole batch's); set bn_stats='group' or accum_steps=1")
  if groups % (num_devices * k):
    s = config.model.hyper.set_size
    raise ConfigError(
        f"config.accum_steps={k}: config.batch_size={config.batch_size} does not split into {k} micro-batches "
        f"of whole set_size={s} groups on {num_devices} devices; use a batch_size that is a multiple of "
        f"{num_devices * k * s}")
  for i, rule in enumerate(config.mesh.get("param_rules", [])):
    if not isinstance(rule, (list, tuple)) or len(rule) != 2 or rule[1] not in ("replicated", "fsdp"):
      raise ConfigError(
          f"config.mesh.param_rules[{i}]={rule!r} must be a (regex, 'replicated' | 'fsdp') pair")
  mode = (config.get("distributed") or {}).get("mode", "auto")
  if mode not in ("auto", "on", "off"):
    raise ConfigError(f"config.distributed.mode={mode!r} is unknown; known: auto, on, off")


def _check_text_pooling(config: ml_collections.ConfigDict) -> None:
  """'last' pooling reads position L-1: only sticky EOS padding puts an EOS there on every row."""
  from hyperclip_jax.data import pp, tokenizers  # late: data imports PIL
  spec = config.data.get("tokenizer", "bytes")
  try:
    _, _, kw = pp.parse_call(spec, tokenizers.TOKENIZERS, "tokenizer")
  except ValueError as e:
    raise ConfigError(f"config.data.tokenizer={spec!r}: {e}") from None
  from hyperclip_jax.models.text import TEXT_PRESETS  # late: models import jax
  preset = TEXT_PRESETS.get(config.model.text.get("preset", None) or "", {})
  pool = config.model.text.get("pool", preset.get("pool", "eot"))
  if pool == "last" and not kw.get("sticky_eos", False):
    raise ConfigError(f"config.model.text.pool='last' needs sticky EOS padding: set config.data.tokenizer to "
                      f"{spec.split('(')[0]}(..., sticky_eos=True) or use pool='eot'")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def model_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config entries a checkpoint's model was built with (shapes and numerics): resume needs the same."""
  data = {k: config.data[k] for k in ("image_size", "max_len", "tokenizer")}
  # remat changes memory and conv_impl the lowering, not the parameters: a run may resume under either
  model = {k: v for k, v in config.model.to_dict().items() if k not in ("remat", "conv_impl")}
  if model["variant"] not in LOWRANK_VARIANTS:
    model.pop("hyper_rank", None)  # unused there: runs saved before the key existed still resume
  return json.loads(json.dumps({"model": model, "data": data}, sort_keys=True, default=str))
