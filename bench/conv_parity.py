"""conv_impl parity on this backend: the image tower with native convolutions vs the CPU forms, same params.

  .venv/bin/python bench/conv_parity.py [--encoder efficientnet_b0] [--image-size 224] [--batch 8] [--tiny]
                                        [--precisions default,highest]

Builds the tower twice from one config (model.conv_impl = native, then cpu_fast), initialises both from the
same key (the parameters are the same tree), and compares a training-mode forward (batch statistics) and the
gradients of a fixed projection of its output with respect to the parameters and the images, at XLA's default
precision and at 'highest' (on GPUs, default f32 convolutions and dots may run in TF32). Prints one JSON line
per figure: max |a - b| and the same divided by max |a|.
"""
from __future__ import annotations

import argparse
import os
import sys

import figures  # bench/ is the script's directory, so on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax import config as config_lib
from hyperclip_jax.models import two_towers

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.py")
IMPLS = ("native", "cpu_fast")


def _max_abs(tree) -> float:
  return float(max(jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--encoder", default="efficientnet_b0")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--tiny", action="store_true", help="width 0.1 / depth 0.2 (a CPU smoke check)")
  p.add_argument("--precisions", default="default,highest", help="jax.default_matmul_precision values")
  args = p.parse_args(argv)
  precisions = [q for q in args.precisions.split(",") if q]
  config = config_lib.load_config(DEMO_CONFIG)
  with config.unlocked():
    config.model.variant = "siglip"
    config.model.image.name = args.encoder
    config.model.image.width_mult = 0.1 if args.tiny else 1.0
    config.model.image.depth_mult = 0.2 if args.tiny else 1.0
    config.data.image_size = args.image_size
  rng = jax.random.PRNGKey(0)
  images = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, args.image_size, args.image_size, 3),
                              jnp.float32, -1.0, 1.0)
  proj = jax.random.normal(jax.random.PRNGKey(2), (args.batch, config.model.embed_dim), jnp.float32)
  results = {}
  for impl in IMPLS:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.model.conv_impl = impl
    model = two_towers.build_model(cfg)
    variables = jax.jit(model.init)(rng)  # one program, not hundreds of eager ops on a GPU

    def loss(params_img, x, model=model, variables=variables):
      params = {**variables["params"], "img": params_img}
      zimg, _ = model.encode_image(params, variables["batch_stats"], x, None, train=True)
      return jnp.sum(zimg * proj), zimg

    for precision in precisions:
      with jax.default_matmul_precision(precision):
        (_, z), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            variables["params"]["img"], images)
      results[(impl, precision)] = jax.device_get((z, grads))
  for precision in precisions:
    (za, (ga, xa)), (zb, (gb, xb)) = results[("native", precision)], results[("cpu_fast", precision)]
    if jax.tree.structure(ga) != jax.tree.structure(gb):
      sys.exit("conv_parity.py: error: native and cpu_fast build different parameter trees; they must match")
    common = dict(encoder=args.encoder, image_size=args.image_size, batch=args.batch, precision=precision,
                  tiny=args.tiny)
    for what, a, b in (("forward", za, zb), ("grad_params", ga, gb), ("grad_images", xa, xb)):
      diff = _max_abs(jax.tree.map(lambda u, v: np.asarray(u, np.float64) - np.asarray(v, np.float64), a, b))
      figures.emit(f"conv_parity_{what}_max_abs_diff", diff, "abs", **common)
      figures.emit(f"conv_parity_{what}_rel_diff", diff / max(_max_abs(a), 1e-30), "ratio", **common)


if __name__ == "__main__":
  main(sys.argv[1:])
