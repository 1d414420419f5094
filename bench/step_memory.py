"""Per-device memory of the paper-size train step, from XLA's buffer assignment (`Compiled.memory_analysis()`).

  .venv/bin/python bench/step_memory.py [--config configs/datacomp.py:encoder=efficientnet_b0]
      [--per-device 128,256,512] [--conv-impl native] [--config.a.b=v ...]

Compiles (never runs) the train step for ONE device holding `per-device` samples, from abstract inputs: nothing
of the size of the state or the batch is allocated, so a laptop can size a pod job. Pure data parallelism puts
exactly this program on every device of a pod at global batch = per-device x devices, but for the loss: the
chunked (ring) sigmoid loss holds one [per-device, per-device] logits block at a time, the same block this
one-device program holds. Prints one JSON line per per-device batch: the state (arguments), the temporaries
(activations kept for the backward pass, workspace), the total, and compile seconds.

What a CPU compile can and cannot say: the buffer sizes come from XLA's CPU backend. TPU and GPU backends fuse
and rematerialise differently, so their peak differs (typically lower, with more fusion); read these as the
size of the step's live values under one real buffer assignment, not as the accelerator's figure.
"""
from __future__ import annotations

import argparse
import sys
import time

import figures  # bench/ is the script's directory, so on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax import config as config_lib
from hyperclip_jax import optim, sharding, train
from hyperclip_jax import state as state_lib
from hyperclip_jax.data import pixels
from hyperclip_jax.models import two_towers

GIB = 1 << 30


def measure(config, per_device: int) -> dict:
  """memory_analysis() of the train step compiled for one device and `per_device` samples."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.batch_size = per_device
    cfg.model.hyper.set_size = min(cfg.model.hyper.set_size, per_device)
  device = jax.devices()[:1]
  mesh = sharding.make_mesh(cfg.mesh, devices=device)
  model = two_towers.build_model(cfg)
  rng = jax.random.PRNGKey(0)
  variables = jax.eval_shape(model.init, rng)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.total_steps, variables["params"])
  state = state_lib.abstract_state(variables, tx, mesh)
  size = cfg.data.image_size
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((per_device, size, size, 3), jnp.uint8, sharding=batch_sharding),
           "text": jax.ShapeDtypeStruct((per_device, cfg.data.max_len), jnp.int32, sharding=batch_sharding)}
  step = train.make_train_step(model, tx, cfg.loss.name, schedule, mesh=mesh, chunked_loss=cfg.loss.chunked,
                               accum_steps=cfg.accum_steps, pixel_affine=pixels.DEFAULT)
  repl = sharding.replicated(mesh)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,), out_shardings=(jax.tree.map(lambda x: x.sharding, state), repl)
                     ).lower(state, batch, rng).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  args_b, temp_b, out_b = mem.argument_size_in_bytes, mem.temp_size_in_bytes, mem.output_size_in_bytes
  alias_b = getattr(mem, "alias_size_in_bytes", 0)  # donated state: outputs reuse the arguments' buffers
  return {"encoder": cfg.model.image.name, "variant": cfg.model.variant, "image_size": size,
          "dtype": cfg.model.dtype, "conv_impl": cfg.model.conv_impl, "per_device_batch": per_device,
          "params": params, "arguments_gib": round(args_b / GIB, 2), "temporaries_gib": round(temp_b / GIB, 2),
          "outputs_not_aliased_gib": round((out_b - alias_b) / GIB, 2),
          "peak_estimate_gib": round((args_b + temp_b + out_b - alias_b) / GIB, 2),
          "compile_s": round(seconds, 1)}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/datacomp.py:encoder=efficientnet_b0")
  parser.add_argument("--per-device", default="128,256,512", help="comma list of per-device batch sizes")
  parser.add_argument("--conv-impl", default="native",
                      help="the convolution lowering compiled (native: what TPU/GPU run; cpu_fast: CPU's forms)")
  rest, overrides = config_lib.split_overrides(argv)
  args = parser.parse_args(rest)
  config = config_lib.load_config(args.config)
  for key, value in overrides:
    config_lib.apply_override(config, key, value)
  with config.unlocked():
    config.model.conv_impl = args.conv_impl
    config.loss.chunked = False  # one device: the ring has one block, the dense loss is that block
  for n in (int(x) for x in args.per_device.split(",") if x):
    row = measure(config, n)
    figures.emit("step_memory_peak", row.pop("peak_estimate_gib"), "GiB", **row)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
