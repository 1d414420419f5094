"""BatchNorm re-estimation at test time: the zero-shot setting recalibrate_bn=N.

For each task, under the norm params Θ' its conditioning generated (whatever `condition` says), the image tower
runs over N held-out training images in batches of min(N, batch_size), every BatchNorm normalising with its
batch's statistics as in training (all images of a batch as one group; no dropout). Each BatchNorm's running
mean and variance become the mean and (biased) variance of its input over all N images: the per-batch means and
mean squares are averaged over the equal-sized batches (a cumulative average, as torch's momentum=None; not an
EMA), and variance = mean square - mean². The task's test images are then embedded in eval mode with those
stats. Params and Θ' are unchanged; the new stats serve only that task's evaluation (the caller's batch_stats
are not modified). A tower without BatchNorm (ViT) is evaluated as without the setting; siglip recalibrates
under its own fixed norm params.

Held-out training images: the demo training source (config.data at config.seed) read on stream HELDOUT_STREAM,
which training (stream 0) and the demo zero-shot tasks (seed 12345, streams 1..7) never read: images of the
training distribution that the run has not seen. Never test images. Other training sources (manifest, tfds,
webdataset) are refused with a one-line error for now.

Several devices or hosts: every host renders all N images and passes the global batch (sharded over the batch
axis); the moments come back replicated, so every host sets exactly the same stats.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from hyperclip_jax import sharding
from hyperclip_jax.data import input_pipeline, sources

HELDOUT_STREAM = 1000  # a demo stream no training run or demo eval task reads


def heldout_images(config: ml_collections.ConfigDict, n: int) -> np.ndarray:
  """The first n images (uint8 [n, H, W, 3]) of the demo training source's held-out stream."""
  name = config.data.get("name", "demo")
  if name != "demo":
    raise ValueError(f"recalibrate_bn needs held-out training images, which only the demo source provides so far; "
                     f"config.data.name={name!r}: leave recalibrate_bn off (0)")
  source = copy.copy(sources.get_source(config.data, config.get("seed", 0)))
  source.stream = HELDOUT_STREAM  # same distribution and seed as training, a stream training never reads
  return np.stack([np.asarray(source[i]["image"], np.uint8) for i in range(n)])


def running_stats(moments: Any, batches: int, like: Any) -> Any:
  """Per-BatchNorm {'mean', 'sq'} summed over `batches` equal batches -> {'mean', 'var'} float32 in the tree of
  `like` (batch_stats['img'])."""
  flat = traverse_util.flatten_dict(moments)
  out = {}
  for path, total in flat.items():
    if path[-1] == "mean":
      mean = np.asarray(total, np.float64) / batches
      sq = np.asarray(flat[path[:-1] + ("sq",)], np.float64) / batches
      out[path] = mean.astype(np.float32)
      out[path[:-1] + ("var",)] = np.maximum(sq - mean * mean, 0.0).astype(np.float32)
  want = traverse_util.flatten_dict(like)
  if set(out) != set(want):
    raise ValueError(f"recalibrate_bn: the BatchNorms that ran ({len(out) // 2}) are not those of batch_stats "
                     f"({len(want) // 2})")
  return traverse_util.unflatten_dict(out)


def reestimate(moments: Callable[..., Any], params: Any, batch_stats: Any, generated: Any, images: np.ndarray,
               batch: int, put: Callable[[np.ndarray], Any] = jnp.asarray) -> Any:
  """batch_stats with every BatchNorm's running stats re-estimated over `images` (uint8 [N, H, W, 3], N a
  multiple of `batch`) under `generated`; moments: (a jit of) TwoTowers.image_moments, put: places a batch."""
  if not jax.tree.leaves(batch_stats["img"]):  # no BatchNorm: nothing to re-estimate
    return batch_stats
  total = None
  for start in range(0, len(images), batch):
    x = put(input_pipeline.to_model_image(images[start:start + batch]))
    m = jax.tree.map(lambda a: np.asarray(a, np.float64), moments(params, batch_stats, x, generated))
    total = m if total is None else jax.tree.map(np.add, total, m)
  return {**batch_stats, "img": running_stats(total, len(images) // batch, batch_stats["img"])}


class Recalibrator:
  """(params, batch_stats, generated) -> batch_stats with every BatchNorm's running stats re-estimated over
  `images` (uint8 [N, H, W, 3]) in batches of `batch` (see the module docstring)."""

  def __init__(self, model: Any, mesh: jax.sharding.Mesh, images: np.ndarray, batch: int):
    if batch < 1 or len(images) % batch:
      raise ValueError(f"recalibrate_bn={len(images)} images do not split into batches of {batch}")
    if batch % mesh.size:
      raise ValueError(f"recalibrate_bn: batches of {batch} held-out images do not split over {mesh.size} devices; "
                       f"use a recalibrate_bn (or batch_size) that is a multiple of {mesh.size}")
    self.images, self.batch = images, batch
    self._sharding = sharding.batch_sharding(mesh)
    self._moments = jax.jit(model.image_moments, out_shardings=sharding.replicated(mesh))

  def __call__(self, params: Any, batch_stats: Any, generated: Any) -> Any:
    return reestimate(self._moments, params, batch_stats, generated, self.images, self.batch, self._put)

  def _put(self, x: np.ndarray) -> jax.Array:
    """The global batch, sharded over the batch axis; every host holds all of it and passes its shards."""
    return jax.make_array_from_callback(x.shape, self._sharding, lambda index: x[index])


def build(config: ml_collections.ConfigDict, model: Any, mesh: jax.sharding.Mesh, n: int,
          batch_size: int) -> Recalibrator | None:
  """The Recalibrator of recalibrate_bn=n (None for 0)."""
  if n == 0:
    return None
  return Recalibrator(model, mesh, heldout_images(config, n), min(n, batch_size))
