"""Helpers shared by the encoder tests: random variables without compiling init, abstract inits, counts."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax.models import build_image_encoder


def random_variables(model, images, seed=0):
  """Variables of the init's shapes with random values, without compiling the init (slow on CPU)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    col, leaf = path[0].key, path[-1].key
    if col == "generated":
      return np.zeros(s.shape, np.float32)
    if leaf == "kernel":  # fan-in scaled, so activations stay O(1)
      return rng.normal(0, 1 / math.sqrt(math.prod(s.shape[:-1])), s.shape).astype(np.float32)
    if leaf == "var":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return ((leaf == "scale") + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def abstract_variables(name, **overrides):
  """ShapeDtypeStructs of a 224 px init of encoder `name`."""
  model = build_image_encoder(name, **overrides)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))


def count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def tiny_encoder(name, overrides, size=32):
  """(model, random variables, images [2, size, size, 3]) for a tiny variant of encoder `name`."""
  model = build_image_encoder(name, **overrides)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, 3), minval=-1, maxval=1)
  return model, random_variables(model, images), images


def perturb_hyper(params, seed=1, scale=0.5):
  """params with noise on every hypernet leaf (as after training steps): its zero-init output layer otherwise
  generates exactly zero (Δ = 0, or U = 0 for the low-rank variants)."""
  leaves, treedef = jax.tree_util.tree_flatten(params["hyper"])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  return {**params, "hyper": jax.tree_util.tree_unflatten(treedef, leaves)}
