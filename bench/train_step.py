"""Train-step throughput: siglip vs hyperclip on the same encoder and data, and loader vs in-memory batches.

  .venv/bin/python bench/train_step.py [--config configs/demo.py] [--steps 20] [--config.a.b=v ...]
  .venv/bin/python bench/train_step.py --full [--encoders efficientnet_b0,tinynet_a,mobilenetv3_large_100]
      [--sizes 64,224] [--rounds 5] [--steps 3] [--no-overhead] [--config.a.b=v ...]

Prints one JSON line per figure. The step is timed on a fixed in-memory batch (model speed alone) and then fed
by the real input pipeline (model + loader); their ratio >= 0.9 means the loader is not the bottleneck.

--full: the encoders at full width and depth (demo text tower and hypernet, batch 32) at each size, then the
overhead config: efficientnet_b0 with the paper-size text tower (causal, width 768, 12 layers, 8 heads, MLP
2560, 77 tokens) and hypernet (width 256, 2 layers, 4 heads, bottleneck 64), batch 32 at 128 px (goal:
hyperclip's step time <= 1.03x siglip's). In --full the two variants are timed in turn, `--steps` steps each,
for `--rounds` rounds (order reversed every other round), in-memory batches only; figures are medians.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import figures  # bench/ is the script's directory, so on sys.path
import jax

from hyperclip_jax import config as config_lib
from hyperclip_jax import optim, sharding, train, validation
from hyperclip_jax import state as state_lib
from hyperclip_jax.data import input_pipeline, tokenizers
from hyperclip_jax.models import two_towers


def _time_steps(step_fn, state, batches, rng, n):
  """Seconds for n steps after one warm-up step (compile excluded); batches: callable () -> batch."""
  state, m = step_fn(state, batches(), rng)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step_fn(state, batches(), rng)
  jax.block_until_ready((state, m))
  return time.perf_counter() - t0, state


def _setup(config, variant):
  """(cfg, mesh, rng, initial state, jitted train step, train iterator, one fixed device batch) for a variant."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.variant = variant
  validation.validate(cfg, jax.device_count())
  mesh = sharding.make_mesh(cfg.mesh)
  model = two_towers.build_model(cfg)
  rng = jax.random.PRNGKey(cfg.seed)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.total_steps, jax.eval_shape(model.init, rng)["params"])
  state = state_lib.init_state(model, tx, rng, mesh)
  repl = sharding.replicated(mesh)
  step_fn = jax.jit(train.make_train_step(model, tx, cfg.loss.name, schedule), donate_argnums=(0,),
                    out_shardings=(repl, repl))
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  it = input_pipeline.make_train_iterator(cfg.data, tokenizer, cfg.batch_size, seed=cfg.seed)
  fixed = sharding.put_batch({k: v for k, v in next(it).items() if k in ("image", "text")}, mesh)
  return cfg, mesh, rng, state, step_fn, it, fixed


def bench_variant(config, variant, steps, with_loader):
  cfg, mesh, rng, state, step_fn, it, fixed = _setup(config, variant)
  secs, state = _time_steps(step_fn, state, lambda: fixed, rng, steps)
  out = {"in_memory": steps * cfg.batch_size / secs}
  if with_loader:
    loader = lambda: sharding.put_batch({k: v for k, v in next(it).items() if k in ("image", "text")}, mesh)
    secs, state = _time_steps(step_fn, state, loader, rng, steps)
    out["loader"] = steps * cfg.batch_size / secs
  return out


FULL_ENCODERS = "efficientnet_b0,tinynet_a,mobilenetv3_large_100"
# PAPER.md: text tower width 768, 8 heads, MLP 2560 (depth 12 is our choice); hypernet 256 wide, 2 layers,
# 4 heads, bottleneck 64.
PAPER_TEXT = dict(width=768, depth=12, heads=8, mlp_dim=2560)
PAPER_HYPER = dict(width=256, depth=2, heads=4, bottleneck=64)


def _full_size(config, encoder: str, image_size: int, batch: int, paper_text: bool = False):
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.image.name = encoder
    cfg.model.image.width_mult = 1.0
    cfg.model.image.depth_mult = 1.0
    cfg.data.image_size = image_size
    cfg.batch_size = batch
    cfg.model.hyper.set_size = min(cfg.model.hyper.set_size, batch)
    cfg.loss.name = "sigmoid"  # the paper's loss, whatever the demo config trains with
    if paper_text:
      cfg.model.text.update(PAPER_TEXT)
      cfg.model.hyper.update(PAPER_HYPER)
      cfg.data.max_len = 77
  return cfg


def _prepare(config, variant):
  """(one-step callable () -> None that blocks, its batch size) for a variant, compiled and warmed up."""
  _, _, rng, state, step_fn, _, fixed = _setup(config, variant)
  holder = {"state": state}

  def run(n: int) -> float:
    t0 = time.perf_counter()
    m = None
    for _ in range(n):
      holder["state"], m = step_fn(holder["state"], fixed, rng)
    jax.block_until_ready((holder["state"], m))
    return time.perf_counter() - t0

  run(1)  # compile + warm-up
  return run


def _interleaved(config, steps: int, rounds: int) -> dict[str, float]:
  """images/s of siglip and hyperclip (median over rounds of `steps` steps each, timed in turn)."""
  runs = {v: _prepare(config, v) for v in ("siglip", "hyperclip")}
  seconds = figures.interleave({v: (lambda run=run: run(steps)) for v, run in runs.items()}, rounds)
  return {v: steps * config.batch_size / t for v, t in seconds.items()}


def full(config, args, config_path: str) -> None:
  """The --full figures: encoders x sizes, then the paper-text-tower overhead config."""
  jobs = [(_full_size(config, e, s, 32), "encoders") for e in args.encoders.split(",") if e
          for s in (int(x) for x in args.sizes.split(",") if x)]
  if not args.no_overhead:
    jobs.append((_full_size(config, "efficientnet_b0", 128, 32, paper_text=True), "overhead"))
  for cfg, what in jobs:
    common = dict(config=config_path, set=what, encoder=cfg.model.image.name, batch_size=cfg.batch_size,
                  image_size=cfg.data.image_size, text_width=cfg.model.text.width, text_depth=cfg.model.text.depth,
                  dtype=cfg.model.dtype, conv_impl=cfg.model.get("conv_impl"), rounds=args.rounds,
                  steps_per_round=args.steps)
    ips = _interleaved(cfg, args.steps, args.rounds)
    for v, x in ips.items():
      figures.emit("train_images_per_sec", round(x, 3), "images/s", variant=v, **common)
    goal = {"goal": "<= 1.03"} if what == "overhead" else {}
    figures.emit("hyperclip_over_siglip_step_time", round(ips["siglip"] / ips["hyperclip"], 4), "ratio", **goal,
                 **common)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = config_lib.split_overrides(argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --full: 3 per round)")
  p.add_argument("--full", action="store_true", help="full-size encoders and the paper-text overhead config")
  p.add_argument("--encoders", default=FULL_ENCODERS, help="--full: image encoders")
  p.add_argument("--sizes", default="64,224", help="--full: image sizes")
  p.add_argument("--rounds", type=int, default=5, help="--full: rounds of interleaved timing")
  p.add_argument("--no-overhead", action="store_true", help="--full: skip the paper-text overhead config")
  args = p.parse_args(rest)
  if args.steps is None:
    args.steps = 3 if args.full else 20
  try:
    config = config_lib.load_config(args.config)
    for k, v in overrides:
      config_lib.apply_override(config, k, v)
  except config_lib.ConfigError as e:
    sys.exit(f"train_step.py: error: {e}")
  if args.full:
    full(config, args, args.config)
    return
  common = dict(config=args.config, encoder=config.model.image.name, batch_size=config.batch_size,
                image_size=config.data.image_size, devices=jax.device_count())
  siglip = bench_variant(config, "siglip", args.steps, with_loader=False)
  hyper = bench_variant(config, "hyperclip", args.steps, with_loader=True)
  figures.emit("train_images_per_sec", round(siglip["in_memory"], 2), "images/s", variant="siglip", **common)
  figures.emit("train_images_per_sec", round(hyper["in_memory"], 2), "images/s", variant="hyperclip", **common)
  figures.emit("hyperclip_over_siglip_throughput", round(hyper["in_memory"] / siglip["in_memory"], 4), "ratio",
               **common)
  figures.emit("train_images_per_sec_with_loader", round(hyper["loader"], 2), "images/s", variant="hyperclip",
               **common)
  figures.emit("loader_over_in_memory_throughput", round(hyper["loader"] / hyper["in_memory"], 4), "ratio",
               **common)


if __name__ == "__main__":
  main()
