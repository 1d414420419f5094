"""The optax optimizer built from `config.optim`: AdamW or big_vision-style Adafactor, an lr schedule,
global-norm clipping, and per-parameter regex rules for weight decay, lr multipliers and freezing.

Regex rules have one semantics across the project (big_vision's): a parameter is named by its path with
keys joined by '/' (`img/stem/conv/kernel`), a rule list is `[(regex, value), ...]`, the regex must match
the whole path (`re.fullmatch`), the first matching rule wins, and every parameter must be matched by some
rule. rules.py implements it; sharding rules use the same.

The update of a trainable parameter p with gradient g at step s is

    p <- p - lr(s) * lr_mult(p) * (direction(clip(g)) + weight_decay * wd_mult(p) * p)

so weight decay is decoupled and follows the lr schedule, as in AdamW (a kernel with zero gradient shrinks
by the factor 1 - lr * weight_decay per step). Frozen parameters get no update and no optimizer state; an
lr multiplier of 0 also stops updates but keeps the (unused) state. The global gradient norm used for
clipping covers the trainable parameters only.

Config keys (`default_config()` holds the defaults, the DataComp/OpenCLIP AdamW recipe):
  name          'adamw' | 'adafactor'
  lr            peak learning rate
  b1, b2, eps   AdamW's moment decays and epsilon
  weight_decay  decoupled weight decay coefficient (multiplied by lr(s) and wd_mult)
  clip_norm     global gradient-norm clipping threshold; 0 or None = off
  wd_mults      [(regex, mult)], default kernels only: [('.*/kernel$', 1.0), ('.*', 0.0)]
  lr_mults      [(regex, mult)], default [('.*', 1.0)]
  frozen        [regex]: matched params are never updated (each regex must match some param)
  schedule      name 'cosine' | 'linear' | 'constant' | 'rsqrt'; warmup_steps (linear from 0);
                end_fraction (cosine/linear: lr fraction reached at total_steps); timescale (rsqrt:
                lr * sqrt(timescale / (timescale + steps after warmup))); cooldown_steps (any schedule:
                linear decay to 0 over the last cooldown_steps)
  adafactor     big_vision's Adafactor ("Scaling Vision Transformers", Zhai et al. 2022): factored second
                moments (scale_by_factored_rms, decay 1 - (s+1)^-decay_rate capped at beta2_cap, tensors
                with two dims >= min_dim_size_to_factor factored), optional per-tensor RMS clipping
                (clipping_threshold; 0/None = off), momentum (0/None = off) kept in momentum_dtype, no
                parameter-scale relative step; weight decay as above. Keys: momentum=0.9,
                momentum_dtype='bfloat16', beta2_cap=0.999, decay_rate=0.8, min_dim_size_to_factor=32,
                clipping_threshold=None, eps=1e-30.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hyperclip_jax import rules

Schedule = Callable[[Any], Any]  # step (int or int array) -> lr (float32 scalar)

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "constant", "linear", "rsqrt")
KERNELS_ONLY = [(".*/kernel$", 1.0), (".*", 0.0)]


def default_config() -> ml_collections.ConfigDict:
  """The default `config.optim`; any key left out of a user config takes its value from here."""
  return ml_collections.ConfigDict({
      "name": "adamw",
      "lr": 5e-4,
      "b1": 0.9,
      "b2": 0.98,
      "eps": 1e-6,
      "weight_decay": 0.2,
      "clip_norm": 0.0,
      "wd_mults": list(KERNELS_ONLY),
      "lr_mults": [(".*", 1.0)],
      "frozen": [],
      "schedule": {
          "name": "cosine",
          "warmup_steps": 500,
          "end_fraction": 0.0,
          "timescale": 10_000,
          "cooldown_steps": 0,
      },
      "adafactor": {
          "momentum": 0.9,
          "momentum_dtype": "bfloat16",
          "beta2_cap": 0.999,
          "decay_rate": 0.8,
          "min_dim_size_to_factor": 32,
          "clipping_threshold": None,
          "eps": 1e-30,
      },
  })


# ----------------------------------------------------------------------------------------------------------
# Config resolution and validation.


def _as_dict(cfg: Any, what: str) -> dict:
  if cfg is None:
    return {}
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return dict(cfg)
  raise ValueError(f"{what} must be a ConfigDict or dict; got {type(cfg).__name__}")


def _merge(defaults: dict, given: dict, what: str) -> dict:
  """defaults updated by given (one level deep for sub-dicts); an unknown key is an error."""
  out = dict(defaults)
  for key, value in given.items():
    if key not in defaults:
      raise ValueError(f"{what}.{key} is not a known key; known: {', '.join(sorted(defaults))}")
    if isinstance(defaults[key], dict):
      out[key] = _merge(defaults[key], _as_dict(value, f"{what}.{key}"), f"{what}.{key}")
    else:
      out[key] = value
  return out


def _number(cfg: dict, key: str, what: str, *, lo: float = 0.0, hi: float = math.inf, hi_open: bool = False,
            allow_none: bool = False) -> float:
  value = cfg[key]
  if value is None and allow_none:
    return 0.0
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value and (
      value < hi if hi_open else value <= hi)
  if not ok:
    bound = f"in [{lo}, {hi}{')' if hi_open else ']'}" if hi != math.inf else f">= {lo}"
    raise ValueError(f"{what}.{key}={value!r} is invalid: it must be a number {bound}")
  return float(value)


def _resolve(optim_cfg: Any, what: str) -> dict:
  """Merges `optim_cfg` over the defaults and validates every value, naming the key on error."""
  cfg = _merge(default_config().to_dict(), _as_dict(optim_cfg, what), what)
  if cfg["name"] not in OPTIMIZERS:
    raise ValueError(f"{what}.name={cfg['name']!r} is unknown; known: {', '.join(OPTIMIZERS)}")
  for key in ("lr", "weight_decay", "eps"):
    cfg[key] = _number(cfg, key, what)
  for key in ("b1", "b2"):
    cfg[key] = _number(cfg, key, what, hi=1.0, hi_open=True)
  cfg["clip_norm"] = _number(cfg, "clip_norm", what, allow_none=True)
  frozen = cfg["frozen"]
  if isinstance(frozen, str) or not isinstance(frozen, Sequence) or not all(isinstance(f, str) for f in frozen):
    raise ValueError(f"{what}.frozen={frozen!r} must be a list of regexes")

  af, af_what = cfg["adafactor"], f"{what}.adafactor"
  af["momentum"] = _number(af, "momentum", af_what, hi=1.0, hi_open=True, allow_none=True)
  af["beta2_cap"] = _number(af, "beta2_cap", af_what, hi=1.0)
  af["decay_rate"] = _number(af, "decay_rate", af_what)
  af["eps"] = _number(af, "eps", af_what)
  af["clipping_threshold"] = _number(af, "clipping_threshold", af_what, allow_none=True)
  if not isinstance(af["min_dim_size_to_factor"], int) or af["min_dim_size_to_factor"] < 1:
    raise ValueError(f"{af_what}.min_dim_size_to_factor={af['min_dim_size_to_factor']!r} must be an int >= 1")
  try:
    af["momentum_dtype"] = jnp.dtype(af["momentum_dtype"])
  except TypeError:
    raise ValueError(f"{af_what}.momentum_dtype={af['momentum_dtype']!r} is not a dtype; use e.g. 'bfloat16' "
                     "or 'float32'") from None
  return cfg


# ----------------------------------------------------------------------------------------------------------
# Schedules.


def make_schedule(schedule_cfg: Any, lr: float, total_steps: int, *,
                  what: str = "config.optim.schedule") -> Schedule:
  """The lr schedule: linear warmup from 0 to `lr` over warmup_steps, then the named decay until total_steps.

  Returns step -> float32 scalar; it is jnp, so it works on a traced step inside jit and on a Python int
  for logging (`float(schedule(step))`). Step s is the lr of the s-th update (0-based).
  """
  defaults = default_config().schedule.to_dict()
  cfg = _merge(defaults, _as_dict(schedule_cfg, what), what)
  if cfg["name"] not in SCHEDULES:
    raise ValueError(f"{what}.name={cfg['name']!r} is unknown; known: {', '.join(SCHEDULES)}")
  if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps={total_steps!r} must be an int >= 1 (the number of training steps)")
  for key in ("warmup_steps", "cooldown_steps"):
    if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 0:
      raise ValueError(f"{what}.{key}={cfg[key]!r} must be an int >= 0")
  warmup, cooldown = cfg["warmup_steps"], cfg["cooldown_steps"]
  if warmup + cooldown > total_steps:
    raise ValueError(
        f"{what}.warmup_steps={warmup} (+ cooldown_steps={cooldown}) exceeds the {total_steps} total training "
        "steps; shorten the warmup or train longer")
  end = _number(cfg, "end_fraction", what, hi=1.0)
  timescale = _number(cfg, "timescale", what)
  if timescale <= 0:
    raise ValueError(f"{what}.timescale={cfg['timescale']!r} must be > 0")
  name, decay_steps = cfg["name"], max(total_steps - warmup, 1)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(step / warmup, 1.0) if warmup else jnp.float32(1.0)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if name == "cosine":
      frac = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif name == "linear":
      frac = 1.0 - (1.0 - end) * progress
    elif name == "rsqrt":
      frac = jnp.sqrt(timescale / (timescale + jnp.maximum(step - warmup, 0.0)))
    else:  # constant
      frac = jnp.float32(1.0)
    if cooldown:
      frac = frac * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return (lr * warm * frac).astype(jnp.float32)

  return schedule


# ----------------------------------------------------------------------------------------------------------
# The optimizer.


def _adafactor(af: dict) -> optax.GradientTransformation:
  """big_vision's Adafactor direction (no lr, no weight decay); see the module docstring."""
  beta2_cap = af["beta2_cap"]

  def decay_rate_fn(step, exponent):  # 1 - (s+1)^-0.8, capped: Adam-like beta2 late in training
    return jnp.minimum(beta2_cap, 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) ** (-exponent))

  parts = [optax.scale_by_factored_rms(
      factored=True, decay_rate=af["decay_rate"], min_dim_size_to_factor=af["min_dim_size_to_factor"],
      epsilon=af["eps"], decay_rate_fn=decay_rate_fn)]
  if af["clipping_threshold"]:
    parts.append(optax.clip_by_block_rms(af["clipping_threshold"]))
  if af["momentum"]:
    parts.append(optax.trace(decay=af["momentum"], accumulator_dtype=af["momentum_dtype"]))
  return optax.chain(*parts)


def _decay_and_multiply(coefs: dict[str, tuple[float, float]], what: str) -> optax.GradientTransformation:
  """Stateless: update -> lr_mult * (update + wd_coef * param), per path; zero for lr_mult 0 (frozen)."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the optimizer needs params: call tx.update(grads, opt_state, params)")

    def one(path, u, p):
      if path not in coefs:
        raise ValueError(f"{what}: param {path!r} was not in the params given to make_optimizer")
      lr_mult, wd_coef = coefs[path]
      if lr_mult == 0.0:
        return jnp.zeros_like(u)
      if wd_coef:
        u = u + wd_coef * p.astype(u.dtype)
      return u * lr_mult if lr_mult != 1.0 else u

    return jax.tree.map(one, rules.param_paths(updates), updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(optim_cfg: Any, total_steps: int, params: Any, *,
                   what: str = "config.optim") -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the optax transformation and its lr schedule (step -> lr, for logging) from `config.optim`.

  `params` may be concrete or abstract (jax.eval_shape output); only its tree structure and paths are used,
  to check the rule lists cover every parameter and to fix the per-parameter multipliers. The returned
  transformation must be updated with params: `tx.update(grads, opt_state, params)`.
  """
  cfg = _resolve(optim_cfg, what)
  schedule = make_schedule(cfg["schedule"], cfg["lr"], total_steps, what=f"{what}.schedule")
  paths = rules.param_paths(params)
  path_list = jax.tree.leaves(paths)
  if not path_list:
    raise ValueError("make_optimizer: params has no leaves")

  frozen_rules = rules.compile_rules([(f, True) for f in cfg["frozen"]], f"{what}.frozen")
  for pattern, _ in frozen_rules:
    if not any(pattern.fullmatch(p) for p in path_list):
      raise ValueError(f"{what}.frozen: {pattern.pattern!r} matches no param; e.g. {path_list[:3]}")
  is_frozen = {p: any(r.fullmatch(p) for r, _ in frozen_rules) for p in path_list}
  lr_mults = dict(zip(path_list, jax.tree.leaves(rules.match_rules(paths, cfg["lr_mults"], f"{what}.lr_mults"))))
  wd_mults = dict(zip(path_list, jax.tree.leaves(rules.match_rules(paths, cfg["wd_mults"], f"{what}.wd_mults"))))
  for key, mults in (("lr_mults", lr_mults), ("wd_mults", wd_mults)):
    for p, m in mults.items():
      if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
        raise ValueError(f"{what}.{key}: the multiplier for {p!r} is {m!r}; it must be a number >= 0")
  coefs = {p: (0.0 if is_frozen[p] else float(lr_mults[p]), cfg["weight_decay"] * float(wd_mults[p]))
           for p in path_list}

  direction = (optax.scale_by_adam(b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"]) if cfg["name"] == "adamw"
               else _adafactor(cfg["adafactor"]))
  trainable = optax.chain(optax.clip_by_global_norm(cfg["clip_norm"]), direction) if cfg["clip_norm"] \
      else direction

  def labels(tree):
    return jax.tree.map(lambda p: "frozen" if is_frozen.get(p, False) else "train", rules.param_paths(tree))

  tx = optax.chain(
      optax.multi_transform({"train": trainable, "frozen": optax.set_to_zero()}, labels),
      _decay_and_multiply(coefs, what),
      optax.scale_by_schedule(lambda step: -schedule(step)),
  )
  return tx, schedule
