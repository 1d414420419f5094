"""Tests for hyperclip_jax/optim.py: schedules, regex rules, weight decay, freezing, clipping, Adafactor."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hyperclip_jax import optim, rules


def _params():
  return {
      "img": {"stem": {"conv": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}},
      "txt": {"dense": {"kernel": jnp.full((4, 4), 2.0), "bias": jnp.full((4,), 2.0)}},
  }


def _cfg(**overrides):
  cfg = {"lr": 0.1, "weight_decay": 0.0, "schedule": {"name": "constant", "warmup_steps": 0}}
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _run(tx, params, grads, steps=1):
  """`steps` jitted updates with fixed grads; returns the final params and optimizer state."""
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


# ------------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("name,expected", [
    # warmup 10 of 110 steps, end fraction 0.1: steps 0, 5 (mid-warmup), 10 (peak), 60 (mid-decay), 110, 200
    ("cosine", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("linear", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    ("rsqrt", [0.0, 0.5, 1.0, math.sqrt(50 / 100), math.sqrt(50 / 150), math.sqrt(50 / 240)]),
])
def test_schedule_values_at_start_warmup_end_and_end(name, expected):
  sched = optim.make_schedule(
      {"name": name, "warmup_steps": 10, "end_fraction": 0.1, "timescale": 50}, lr=2.0, total_steps=110)
  got = [float(sched(s)) for s in (0, 5, 10, 60, 110, 200)]
  np.testing.assert_allclose(got, [2.0 * e for e in expected], rtol=1e-5, atol=1e-7)


def test_schedule_cooldown_decays_to_zero_at_total_steps():
  sched = optim.make_schedule(
      {"name": "rsqrt", "warmup_steps": 0, "timescale": 100, "cooldown_steps": 20}, lr=1.0, total_steps=100)
  np.testing.assert_allclose(float(sched(90)), math.sqrt(100 / 190) * 0.5, rtol=1e-5)
  assert float(sched(100)) == 0.0


def test_schedule_runs_under_jit_on_traced_steps():
  sched = optim.make_schedule({"name": "cosine", "warmup_steps": 4}, lr=1.0, total_steps=12)
  got = jax.jit(jax.vmap(sched))(jnp.arange(13))
  np.testing.assert_allclose(np.asarray(got), [float(sched(s)) for s in range(13)], rtol=1e-6)
  assert float(got[4]) == 1.0 and float(got[12]) == pytest.approx(0.0, abs=1e-7)


def test_optimizer_follows_the_schedule_from_step_zero():
  # Warmup makes the very first update zero; AdamW's first direction is ±1, so updates read the schedule.
  params = {"w": {"kernel": jnp.zeros((2,))}}
  cfg = _cfg(lr=1.0, eps=1e-12, schedule={"name": "linear", "warmup_steps": 2})
  tx, sched = optim.make_optimizer(cfg, total_steps=4, params=params)
  state = tx.init(params)
  grads = {"w": {"kernel": jnp.ones((2,))}}
  for step in range(4):
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), -float(sched(step)), rtol=1e-5)


# -------------------------------------------------------------------------------------------- regex rules


def test_param_paths_join_keys_with_slashes():
  paths = rules.param_paths({"img": {"blocks": [{"kernel": 0}, {"kernel": 0}]}, "t": jnp.zeros(())})
  assert paths == {"img": {"blocks": [{"kernel": "img/blocks/0/kernel"}, {"kernel": "img/blocks/1/kernel"}]},
                   "t": "t"}


def test_match_rules_first_match_wins_and_regex_matches_whole_path():
  paths = rules.param_paths(_params())
  got = rules.match_rules(paths, [("img/.*/kernel", 3.0), (".*/kernel$", 1.0), ("img", 7.0), (".*", 0.0)], "r")
  assert got == {"img": {"stem": {"conv": {"kernel": 3.0, "bias": 0.0}}},
                 "txt": {"dense": {"kernel": 1.0, "bias": 0.0}}}


def test_unmatched_param_is_an_error_naming_path_and_rules():
  with pytest.raises(ValueError, match=r"config.optim.wd_mults: param 'img/stem/conv/bias' matches no rule"):
    optim.make_optimizer(_cfg(wd_mults=[(".*/kernel$", 1.0)]), 10, _params())
  with pytest.raises(ValueError, match=r"config.optim.lr_mults: param 'img/stem/conv/bias'.*\['txt/.\*'\]"):
    optim.make_optimizer(_cfg(lr_mults=[("txt/.*", 1.0)]), 10, _params())


def test_bad_regex_and_bad_rule_shape_are_errors():
  with pytest.raises(ValueError, match=r"config.optim.lr_mults: '\(' is not a valid regex"):
    optim.make_optimizer(_cfg(lr_mults=[("(", 1.0)]), 10, _params())
  with pytest.raises(ValueError, match=r"config.optim.wd_mults: each rule must be a \(regex, value\) pair"):
    optim.make_optimizer(_cfg(wd_mults=[".*"]), 10, _params())


# --------------------------------------------------------------------------------------------- the update


def test_weight_decay_shrinks_kernels_only_by_lr_times_wd():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.make_optimizer(_cfg(lr=0.1, weight_decay=0.5), 10, params)
  new, _ = _run(tx, params, zero)
  np.testing.assert_allclose(np.asarray(new["img"]["stem"]["conv"]["kernel"]), 1.0 * (1 - 0.05), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["txt"]["dense"]["kernel"]), 2.0 * (1 - 0.05), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new["img"]["stem"]["conv"]["bias"]), 1.0)
  np.testing.assert_array_equal(np.asarray(new["txt"]["dense"]["bias"]), 2.0)


def test_wd_mults_scale_the_decay_per_param():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  cfg = _cfg(lr=0.1, weight_decay=0.5, wd_mults=[("txt/.*/kernel", 2.0), (".*/kernel", 1.0), (".*", 0.0)])
  new, _ = _run(optim.make_optimizer(cfg, 10, params)[0], params, zero)
  np.testing.assert_allclose(np.asarray(new["txt"]["dense"]["kernel"]), 2.0 * (1 - 0.1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["img"]["stem"]["conv"]["kernel"]), 1.0 * (1 - 0.05), rtol=1e-6)


def test_frozen_params_never_change_and_have_no_optimizer_state():
  params = _params()
  ones = jax.tree.map(jnp.ones_like, params)
  tx, _ = optim.make_optimizer(_cfg(weight_decay=0.5, frozen=["img/.*"]), 10, params)
  new, state = _run(tx, params, ones, steps=3)
  for a, b in zip(jax.tree.leaves(params["img"]), jax.tree.leaves(new["img"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.max(jnp.abs(new["txt"]["dense"]["kernel"] - 2.0))) > 0.1
  # AdamW keeps mu and nu for the 20 trainable values only; the frozen 8 values hold no state.
  state_sizes = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert state_sizes == 2 * (16 + 4)


def test_frozen_regex_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match=r"config.optim.frozen: 'image/.\*' matches no param"):
    optim.make_optimizer(_cfg(frozen=["image/.*"]), 10, _params())


def test_lr_mults_scale_the_update_and_zero_freezes():
  params = _params()
  ones = jax.tree.map(jnp.ones_like, params)
  cfg = _cfg(lr=0.1, weight_decay=0.5, lr_mults=[("img/.*/kernel", 0.5), ("img/.*", 0.0), (".*", 1.0)])
  tx, _ = optim.make_optimizer(cfg, 10, params)
  new, _ = _run(tx, params, ones)
  base, _ = _run(optim.make_optimizer(_cfg(lr=0.1, weight_decay=0.5), 10, params)[0], params, ones)
  delta = lambda t: np.asarray(t["img"]["stem"]["conv"]["kernel"]) - 1.0
  np.testing.assert_allclose(delta(new), 0.5 * delta(base), rtol=1e-5)  # update and decay both halved
  assert np.all(delta(base) < -0.1)
  np.testing.assert_array_equal(np.asarray(new["img"]["stem"]["conv"]["bias"]), 1.0)
  np.testing.assert_allclose(np.asarray(new["txt"]["dense"]["kernel"]), np.asarray(base["txt"]["dense"]["kernel"]))


def test_global_norm_clipping_bounds_the_update_norm():
  # With a huge eps Adam's direction is ≈ g / eps, so |update| <= lr * |g| / eps and clipping shows through.
  params = {"a": {"kernel": jnp.zeros((8, 8))}, "b": {"bias": jnp.zeros((8,))}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 10.0), params)  # global norm 10 * sqrt(72) ≈ 84.9
  norms = {}
  for clip in (0.0, 1.0):
    tx, _ = optim.make_optimizer(_cfg(lr=1.0, eps=1e6, clip_norm=clip), 10, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    norms[clip] = float(optax.tree.norm(updates))
  assert norms[1.0] <= 1.0 / 1e6
  assert norms[1.0] == pytest.approx(1.0 / 1e6, rel=1e-3)
  assert norms[0.0] == pytest.approx(10.0 * math.sqrt(72) / 1e6, rel=1e-3)


def test_adafactor_factors_state_and_minimises_a_quadratic():
  target = jax.random.normal(jax.random.key(0), (64, 48))
  params = {"w": {"kernel": jnp.zeros((64, 48)), "bias": jnp.zeros((48,))}}
  loss = lambda p: 0.5 * jnp.sum((p["w"]["kernel"] - target) ** 2) + 0.5 * jnp.sum((p["w"]["bias"] - 1.0) ** 2)
  cfg = _cfg(name="adafactor", lr=0.05, weight_decay=1e-4,
             schedule={"name": "cosine", "warmup_steps": 5, "end_fraction": 0.1})
  tx, _ = optim.make_optimizer(cfg, 60, params)
  state = tx.init(params)
  shapes = {(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(state) if x.ndim > 0}
  # Factored second moments for the [64, 48] kernel (row and column vectors), full ones only for the bias;
  # momentum in bfloat16.
  assert ((64,), "float32") in shapes and ((48,), "float32") in shapes
  assert ((64, 48), "bfloat16") in shapes and ((64, 48), "float32") not in shapes

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  start = float(loss(params))
  for _ in range(60):
    params, state = step(params, state)
  assert float(loss(params)) < 0.05 * start


def test_adafactor_options_clipping_and_no_momentum():
  params = {"w": {"kernel": jnp.zeros((40, 40))}}
  cfg = _cfg(name="adafactor", adafactor={"momentum": None, "clipping_threshold": 1.0})
  tx, _ = optim.make_optimizer(cfg, 10, params)
  state = tx.init(params)
  assert all(x.size <= 40 for x in jax.tree.leaves(state))  # no full-size momentum
  updates, _ = jax.jit(tx.update)({"w": {"kernel": jnp.full((40, 40), 3.0)}}, state, params)
  rms = float(jnp.sqrt(jnp.mean(updates["w"]["kernel"] ** 2)))
  assert rms == pytest.approx(0.1, rel=1e-3)  # block-RMS clipped direction (1.0) times lr


def test_works_with_abstract_params_and_jitted_init():
  params = _params()
  abstract = jax.eval_shape(lambda: params)
  tx, _ = optim.make_optimizer(_cfg(frozen=["txt/.*"]), 10, abstract)
  state_shapes = jax.eval_shape(tx.init, abstract)
  state = jax.jit(tx.init)(params)
  assert jax.tree.structure(state_shapes) == jax.tree.structure(state)


def test_default_config_builds_and_rules_default_to_kernels_only():
  cfg = optim.default_config()
  assert cfg.wd_mults == [(".*/kernel$", 1.0), (".*", 0.0)] and cfg.name == "adamw"
  tx, sched = optim.make_optimizer(cfg, 1000, _params())
  assert float(sched(500)) == pytest.approx(cfg.lr)


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides,message", [
    ({"name": "adam"}, r"config.optim.name='adam' is unknown; known: adamw, adafactor"),
    ({"schedule": {"name": "cosin"}},
     r"config.optim.schedule.name='cosin' is unknown; known: cosine, constant, linear, rsqrt"),
    ({"schedule": {"name": "cosine", "warmup_steps": 20}}, r"config.optim.schedule.warmup_steps=20 .*exceeds"),
    ({"lr": -1e-3}, r"config.optim.lr=-0.001 is invalid"),
    ({"b2": 1.0}, r"config.optim.b2=1.0 is invalid"),
    ({"momentum": 0.9}, r"config.optim.momentum is not a known key"),
    ({"schedule": {"name": "cosine", "warmup": 3}}, r"config.optim.schedule.warmup is not a known key"),
    ({"adafactor": {"momentum_dtype": "bf17"}}, r"config.optim.adafactor.momentum_dtype='bf17' is not a dtype"),
])
def test_bad_config_values_are_errors_naming_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(_cfg(**overrides), 10, _params())


def test_bad_total_steps_is_an_error():
  with pytest.raises(ValueError, match=r"total_steps=0 must be an int >= 1"):
    optim.make_optimizer(_cfg(), 0, _params())
