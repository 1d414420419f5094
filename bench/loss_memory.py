"""Per-device memory of the sigmoid loss's forward + backward: dense vs chunked (ring), for growing batch.

  .venv/bin/python bench/loss_memory.py [--devices 8] [--dim 768] [--batches 512,1024,2048,4096,8192]

Compiles value_and_grad of each loss on a batch sharded over N fake CPU devices and prints one JSON line per
(loss, batch): the temp bytes of XLA's memory_analysis() of the compiled program, and its other sizes (per
device: the SPMD program each device runs). Nothing is executed, so large batches cost only compile time. The
dense loss all-gathers the texts and holds [B/N, B] logits per device (quadratic in B); the ring holds one
[B/N, B/N] block plus the text blocks it has seen ([B, D] in all, linear in B), so at a fixed device count it
grows N times slower.
"""
from __future__ import annotations

import argparse
import os
import sys

import figures  # bench/ is the script's directory, so on sys.path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--dim", type=int, default=768, help="embedding width D")
  parser.add_argument("--batches", default="512,1024,2048,4096,8192", help="global batch sizes, comma separated")
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import jax  # after XLA_FLAGS: the fake device count is read at backend start
  import jax.numpy as jnp
  import ml_collections
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from hyperclip_jax import losses, sharding

  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=args.devices, fsdp=1)))
  fns = {"dense": losses.sigmoid_loss, "chunked": losses.get_loss("sigmoid", chunked=True, mesh=mesh)}
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  for b in (int(x) for x in args.batches.split(",")):
    z = jax.ShapeDtypeStruct((b, args.dim), jnp.float32, sharding=NamedSharding(mesh, P(sharding.BATCH_AXES)))
    for name, fn in fns.items():
      compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3))).lower(z, z, scalar, scalar).compile()
      m = compiled.memory_analysis()
      figures.emit("loss_temp_bytes_per_device", int(m.temp_size_in_bytes), "bytes", loss=name, batch=b,
                   devices=args.devices, dim=args.dim, argument_bytes_per_device=int(m.argument_size_in_bytes),
                   output_bytes_per_device=int(m.output_size_in_bytes),
                   logit_block_bytes=4 * (b // args.devices) * (b if name == "dense" else b // args.devices))
  return 0


if __name__ == "__main__":
  sys.exit(main())
