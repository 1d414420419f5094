"""Shared set-up for the scale-out tests: the tiny demo config, a fixed batch, a state on a given mesh."""
import os

import jax
import ml_collections
import numpy as np

from hyperclip_jax import config as config_lib
from hyperclip_jax import optim, sharding, train
from hyperclip_jax import state as state_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEMO = os.path.join(ROOT, "configs", "demo.py")


def tiny_config(variant="hyperclip", **overrides):
  config = config_lib.load_config(f"{DEMO}:tiny=true,variant={variant}")
  config_lib.apply_override(config, "optim.schedule.warmup_steps", "0")  # a non-zero lr from step 0
  # Adam's first step moves each param by lr·g/(|g| + eps): with eps=1e-8, gradients at rounding-noise level
  # (~1e-9, e.g. channels the loss barely sees) would become ±lr moves whose sign is noise. A larger eps keeps
  # the comparison about the step's arithmetic, not about Adam amplifying reduction-order noise.
  config_lib.apply_override(config, "optim.eps", "1e-4")
  for k, v in overrides.items():
    config_lib.apply_override(config, k, str(v))
  return config


# A two-block ViT: the fastest hyperclip model to compile (generated LayerNorm params); sharding, multi-process
# and restore are model-agnostic. Tests of BatchNorm semantics keep the tiny EfficientNet.
FAST = {"model.image.name": "vit_tiny_patch16_224", "model.image.width_mult": 0.34, "model.image.depth_mult": 0.1}


def fast_config(variant="hyperclip", **overrides):
  return tiny_config(variant, **{**FAST, **overrides})


def fixed_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, s = config.batch_size, config.data.image_size
  vocab = tokenizers.get_tokenizer(config.data.tokenizer).vocab_size
  return {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
          "text": rng.integers(1, vocab, (b, config.data.max_len)).astype(np.int32)}


def mesh_of(data, fsdp, devices=None):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)), devices)


def setup(config, mesh):
  """(model, tx, schedule, state) with the state placed on `mesh` by config.mesh.param_rules."""
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(config.seed)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps,
                                      jax.eval_shape(model.init, rng)["params"])
  return model, tx, schedule, state_lib.init_state(model, tx, rng, mesh, config.mesh.param_rules)


def run_steps(config, mesh, steps=1, **step_kw):
  """Params (numpy) and losses after `steps` train steps on the fixed batch."""
  model, tx, schedule, state = setup(config, mesh)
  step = jax.jit(train.make_train_step(model, tx, config.loss.name, schedule, mesh=mesh, **step_kw),
                 donate_argnums=(0,))
  batch = sharding.put_batch(fixed_batch(config), mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics["train/loss"]))
  return jax.device_get(state["params"]), losses


def assert_trees_close(got, want, rtol=1e-4, atol=1e-6):
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want)
  for (path, g), w in zip(flat_got, flat_want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def abstract_state(config, mesh):
  """The train state's ShapeDtypeStructs, placed on `mesh` by the partition rules: a restore target."""
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(config.seed)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, jax.eval_shape(model.init, rng)["params"])

  def make(rng):
    variables = model.init(rng)
    return {"step": jax.numpy.zeros((), jax.numpy.int32), "params": variables["params"],
            "opt_state": tx.init(variables["params"]), "batch_stats": variables["batch_stats"]}

  shapes = jax.eval_shape(make, rng)
  shardings = sharding.state_shardings(shapes, config.mesh.param_rules, mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def restore_params(config, workdir, step, mesh):
  from hyperclip_jax import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(workdir)
  try:
    state, _ = checkpointer.restore(step, abstract_state(config, mesh))
  finally:
    checkpointer.close()
  return jax.device_get(state["params"])


def cli_overrides(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]
