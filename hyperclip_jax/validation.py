"""Config values checked against the package: encoder, tokenizer, evaluator and conv names, the batch's split into
devices x set_size (x accumulation steps), partition rules. Every entry point runs `validate` after loading the
config and its overrides (config.py) and before anything compiles; each problem is a one-line ConfigError
naming the key.
"""
from __future__ import annotations

import ml_collections

from hyperclip_jax import evaluators
from hyperclip_jax.config import ConfigError
from hyperclip_jax.data import pp, tokenizers
from hyperclip_jax.models import image_encoder_names
from hyperclip_jax.models.options import validate_options
from hyperclip_jax.models.text import TEXT_PRESETS

VARIANTS = ("siglip", "hyperclip", "token", "linear", "conv")  # linear, conv: models/lowrank.py
LOSSES = ("sigmoid", "softmax")
LOSS_SCOPES = ("batch", "group")  # losses.SCOPES
OPTION_KEYS = {"conv_impl": "config.model.conv_impl", "norm_mode": "config.model.image.norm_mode",
               "dtype": "config.model.dtype", "bn_stats": "config.model.image.bn_stats"}
RESUME_MODES = ("auto", "fresh")  # fresh moves existing checkpoints to WORKDIR/checkpoints_previous


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks values that no override type check can catch; raises ConfigError naming the key."""
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
  try:  # the encoders' options, checked once here and again by each encoder's factory
    validate_options(conv_impl=m.get("conv_impl", "auto"), norm_mode=m.image.get("norm_mode", "residual"),
                     dtype=m.dtype, bn_stats=m.image.get("bn_stats", "group"), keys=OPTION_KEYS)
  except ValueError as e:
    raise ConfigError(f"{e} (conv_impl auto: cpu_fast on CPU, native on GPU/TPU)" if "conv_impl" in str(e)
                      else str(e)) from None
  _check_task_sets(config)
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


def _check_task_sets(config: ml_collections.ConfigDict) -> None:
  """config.data.task_sets: a probability; > 0 needs the demo source and the sigmoid loss (multi-positive rows)."""
  p = config.data.get("task_sets", 0.0)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
    raise ConfigError(f"config.data.task_sets={p!r} must be a probability in [0, 1] (0 = off)")
  if not p:
    return
  name = config.data.get("name", "demo")
  if name != "demo":
    raise ConfigError(f"config.data.task_sets={p} is implemented for the demo source only, not "
                      f"config.data.name={name!r}; set it to 0 (docs/data.md, task-shaped sets, says how it maps "
                      "to real data)")
  if config.loss.name != "sigmoid":
    raise ConfigError(f"config.data.task_sets={p} gives rows several positives, which needs "
                      f"config.loss.name='sigmoid' (got {config.loss.name!r})")


def _check_text_pooling(config: ml_collections.ConfigDict) -> None:
  """'last' pooling reads position L-1: only sticky EOS padding puts an EOS there on every row."""
  spec = config.data.get("tokenizer", "bytes")
  try:
    _, _, kw = pp.parse_call(spec, tokenizers.TOKENIZERS, "tokenizer")
  except ValueError as e:
    raise ConfigError(f"config.data.tokenizer={spec!r}: {e}") from None
  preset = TEXT_PRESETS.get(config.model.text.get("preset", None) or "", {})
  pool = config.model.text.get("pool", preset.get("pool", "eot"))
  if pool == "last" and not kw.get("sticky_eos", False):
    raise ConfigError(f"config.model.text.pool='last' needs sticky EOS padding: set config.data.tokenizer to "
                      f"{spec.split('(')[0]}(..., sticky_eos=True) or use pool='eot'")
