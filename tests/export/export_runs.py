"""Synthetic run directories for the export tests: config.json + a checkpoint of random weights, for any
variant and encoder (cheaper than training one each).

Synthetic runs have random BatchNorm statistics and a random hypernet, so the generated norm params are far
from zero and folding has real work to do (a freshly initialised hypernet generates exactly zero).
"""
import math
import os

import jax
import numpy as np

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import optim
from hyperclip_jax import state as state_lib
from hyperclip_jax.models import two_towers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def tiny_config(variant="hyperclip", encoder="efficientnet_b0", steps=2):
  return config_lib.load_config(f"{DEMO}:tiny=true,variant={variant},encoder={encoder},steps={steps}")


def _random_leaf(rng, path, s):
  keys = [getattr(p, "key", getattr(p, "name", "")) for p in path]
  leaf = keys[-1] if keys else ""
  if keys[:1] == ["step"]:
    return np.asarray(3, s.dtype)
  if "opt_state" in keys[:1] or not np.issubdtype(s.dtype, np.floating):
    return np.zeros(s.shape, s.dtype)
  if keys[-2:] == ["params", "t"]:
    return np.asarray(math.log(10.0), s.dtype)
  if keys[-2:] == ["params", "b"]:
    return np.asarray(-2.0, s.dtype)
  if leaf in ("kernel", "embedding"):  # fan-in scaled, so activations stay O(1)
    return rng.normal(0, 1 / math.sqrt(max(1, math.prod(s.shape[:-1]))), s.shape).astype(s.dtype)
  if leaf == "var":
    return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
  if leaf == "mean":
    return (0.2 * rng.normal(size=s.shape)).astype(s.dtype)
  return ((leaf == "scale") + 0.1 * rng.normal(size=s.shape)).astype(s.dtype)


def make_run(workdir, variant="hyperclip", encoder="efficientnet_b0", seed=0, **overrides):
  """A workdir as hyperclip-train leaves it (config.json, checkpoints/3) holding random weights."""
  config = tiny_config(variant, encoder)
  for key, value in overrides.items():
    config_lib.apply_override(config, key, str(value))
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(0)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, jax.eval_shape(model.init, rng)["params"])
  mesh = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  abstract = jax.eval_shape(lambda r: state_lib.init_state(model, tx, r, mesh), rng)
  np_rng = np.random.default_rng(seed)
  state = jax.tree_util.tree_map_with_path(lambda p, s: _random_leaf(np_rng, p, s), abstract)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  checkpointer.save(3, state, {}, config_lib.model_signature(config))
  checkpointer.close()
  return str(workdir)
