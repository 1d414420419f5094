"""Train-step throughput: siglip vs hyperclip on the same encoder and data, and loader vs in-memory batches.

  .venv/bin/python bench/train_step.py [--config configs/demo.py] [--steps 20] [--config.a.b=v ...]

Prints one JSON line per figure. The step is timed on a fixed in-memory batch (model speed alone) and then fed
by the real input pipeline (model + loader); their ratio >= 0.9 means the loader is not the bottleneck.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from hyperclip_jax import config as config_lib
from hyperclip_jax import optim
from hyperclip_jax import sharding
from hyperclip_jax import train
from hyperclip_jax.data import input_pipeline
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers


def _emit(**row):
  print(json.dumps(row), flush=True)


def _time_steps(step_fn, state, batches, rng, n):
  """Seconds for n steps after one warm-up step (compile excluded); batches: callable () -> batch."""
  state, m = step_fn(state, batches(), rng)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step_fn(state, batches(), rng)
  jax.block_until_ready((state, m))
  return time.perf_counter() - t0, state


def bench_variant(config, variant, steps, with_loader):
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.variant = variant
  config_lib.validate(cfg, jax.device_count())
  mesh = sharding.make_mesh(cfg.mesh)
  model = two_towers.build_model(cfg)
  rng = jax.random.PRNGKey(cfg.seed)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.total_steps, jax.eval_shape(model.init, rng)["params"])
  state = train.init_state(model, tx, rng, mesh)
  repl = sharding.replicated(mesh)
  step_fn = jax.jit(train.make_train_step(model, tx, cfg.loss.name, schedule), donate_argnums=(0,),
                    out_shardings=(repl, repl))
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  it = input_pipeline.make_train_iterator(cfg.data, tokenizer, cfg.batch_size, seed=cfg.seed)
  fixed = sharding.put_batch({k: v for k, v in next(it).items() if k in ("image", "text")}, mesh)
  secs, state = _time_steps(step_fn, state, lambda: fixed, rng, steps)
  out = {"in_memory": steps * cfg.batch_size / secs}
  if with_loader:
    loader = lambda: sharding.put_batch({k: v for k, v in next(it).items() if k in ("image", "text")}, mesh)
    secs, state = _time_steps(step_fn, state, loader, rng, steps)
    out["loader"] = steps * cfg.batch_size / secs
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = config_lib.split_overrides(argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args(rest)
  try:
    config = config_lib.load_config(args.config)
    for k, v in overrides:
      config_lib.apply_override(config, k, v)
  except config_lib.ConfigError as e:
    sys.exit(f"train_step.py: error: {e}")
  common = dict(config=args.config, encoder=config.model.image.name, batch_size=config.batch_size,
                image_size=config.data.image_size, backend=jax.default_backend(),
                device=jax.devices()[0].device_kind, devices=jax.device_count())
  siglip = bench_variant(config, "siglip", args.steps, with_loader=False)
  hyper = bench_variant(config, "hyperclip", args.steps, with_loader=True)
  _emit(figure="train_images_per_sec", variant="siglip", value=round(siglip["in_memory"], 2), **common)
  _emit(figure="train_images_per_sec", variant="hyperclip", value=round(hyper["in_memory"], 2), **common)
  _emit(figure="hyperclip_over_siglip_throughput", value=round(hyper["in_memory"] / siglip["in_memory"], 4),
        **common)
  _emit(figure="train_images_per_sec_with_loader", variant="hyperclip", value=round(hyper["loader"], 2), **common)
  _emit(figure="loader_over_in_memory_throughput", value=round(hyper["loader"] / hyper["in_memory"], 4), **common)


if __name__ == "__main__":
  main()
