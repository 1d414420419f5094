"""The HyperCLIP two-tower model and its variants, as pure functions over one variables tree.

  siglip     image tower with its own norm params (the baseline)
  hyperclip  hypernet(set of text embeddings) -> per-group norm params of the image tower
  token      hypernet(learned tokens) -> norm params: same extra capacity, no text conditioning
  linear     hypernet(set of text embeddings) -> per-group rank-r update of the final projection (lowrank.py)
  conv       hypernet(set of text embeddings) -> per-group rank-r update of the last 1x1 conv (lowrank.py)

Variables: {'params': {'img', 'txt', 'hyper'?, 'tokens'?, 'lowrank'?, 't', 'b'}, 'batch_stats': {'img'}}. The towers are
linen modules applied one after the other (not nested) so that the generated norm params travel as the image
tower's 'generated' collection, exactly the structure `jax.eval_shape` of its init reports.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hyperclip_jax import models
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import hypernet as hypernet_lib
from hyperclip_jax.models import layers
from hyperclip_jax.models import lowrank as lowrank_lib
from hyperclip_jax.models import text as text_lib

Array = jax.Array
Params = Any


class ImageTower(nn.Module):
  """Image encoder + linear projection to the joint embedding space (no bias, as in CLIP/SigLIP)."""
  encoder: nn.Module
  embed_dim: int

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    features = self.encoder(images, train=train)  # [B, C] or [G, S, C]
    return nn.Dense(self.embed_dim, use_bias=False, name="head")(features.astype(jnp.float32))


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps * eps))


@dataclasses.dataclass(frozen=True)
class TwoTowers:
  """HyperCLIP model: text tower, hypernetwork, image tower and the SigLIP temperature/bias."""
  variant: str
  image: ImageTower
  text: nn.Module
  hyper: nn.Module | None
  set_size: int
  image_size: int
  max_len: int
  t_init: float = math.log(10.0)
  b_init: float = -10.0
  lowrank: lowrank_lib.Target | None = None  # linear / conv: the layer the generated update goes to
  hyper_rank: int = 32  # linear / conv: the rank r of that update

  # ---- init ------------------------------------------------------------------------------------------------
  def generated_template(self) -> Any:
    """Shapes of the image tower's generated norm params (leaves [C]), without running anything."""
    dummy = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(self.image.init, jax.random.PRNGKey(0), dummy)
    return shapes[layers.GENERATED]

  def init(self, rng: Array) -> dict[str, Any]:
    r_img, r_txt, r_hyp, r_tok = jax.random.split(rng, 4)
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, self.max_len), jnp.int32)
    img_vars = self.image.init(r_img, images)
    params = {
        "img": img_vars["params"],
        "txt": self.text.init(r_txt, tokens)["params"],
        "t": jnp.asarray(self.t_init, jnp.float32),
        "b": jnp.asarray(self.b_init, jnp.float32),
    }
    if self.hyper is not None:
      z = jnp.zeros((1, self.set_size, self.embed_dim), jnp.float32)
      params["hyper"] = self.hyper.init(r_hyp, z)["params"]
    if self.variant == "token":
      params["tokens"] = l2_normalize(jax.random.normal(r_tok, (self.set_size, self.embed_dim), jnp.float32))
    if self.lowrank is not None:
      params["lowrank"] = {"v0": lowrank_lib.init_v0(r_tok, self.lowrank, self.hyper_rank)}
    # ViTs have only LayerNorms: no running statistics, an empty batch_stats collection.
    return {"params": params, "batch_stats": {"img": img_vars.get("batch_stats", {})}}

  @property
  def embed_dim(self) -> int:
    return self.image.embed_dim

  # ---- the three parts -------------------------------------------------------------------------------------
  def encode_text(self, params: Params, tokens: Array, train: bool = False) -> Array:
    """tokens [N, L] -> L2-normalised ztxt [N, D]."""
    return l2_normalize(self.text.apply({"params": params["txt"]}, tokens, train=train))

  def generate(self, params: Params, ztxt_groups: Array, mask: Array | None = None) -> Any | None:
    """ztxt_groups [G, S, D] (sets of text embeddings) -> norm-param tree with leaves [G, C]; None for siglip.

    The token variant ignores the texts and reads its learned tokens: its leaves are [1, C] (one set for all).
    linear / conv: the low-rank update's factors {u [G, Cin, r], v [G, Cout, r]} (lowrank.factors).
    """
    if self.variant == "siglip":
      return None
    if self.variant == "token":
      return self.hyper.apply({"params": params["hyper"]}, params["tokens"][None])
    if ztxt_groups.ndim != 3 or ztxt_groups.shape[1] == 0:
      raise ValueError(f"generate expects a non-empty set of text embeddings [G, S, D]; got {ztxt_groups.shape}")
    generated = self.hyper.apply({"params": params["hyper"]}, ztxt_groups, mask)
    if self.lowrank is not None:
      return lowrank_lib.factors(generated, params["lowrank"]["v0"])
    return generated

  def generate_mean(self, params: Params, ztxt_groups: Array) -> Any | None:
    """generate() averaged over the G sets: one norm-param tree with leaves [1, C] for every image (test-time
    conditioning on several sets at once); None for siglip. linear / conv: the mean of the G updates U Vᵀ, as
    one update of rank G·r."""
    generated = self.generate(params, ztxt_groups)
    if self.lowrank is not None:
      return lowrank_lib.mean_factors(generated)
    return None if generated is None else jax.tree.map(lambda leaf: leaf.mean(0, keepdims=True), generated)

  def encode_image(self, params: Params, batch_stats: Any, images: Array, generated: Any | None = None,
                   train: bool = False, rng: Array | None = None) -> tuple[Array, Any]:
    """images [B, H, W, 3] or grouped [G, S, H, W, 3] -> (L2-normalised zimg, updated batch_stats).

    In training, BatchNorm statistics are per group; `generated` leaves ([G, C] or [1, C]) give each group its
    own norm affine. Returns zimg with the images' leading shape ([B, D] or [G, S, D]).
    """
    apply, variables = self._image_apply(params, batch_stats, generated)
    rngs = {"dropout": rng} if rng is not None else {}
    if train:
      z, updates = apply(variables, images, train=True, rngs=rngs, mutable=["batch_stats"])
      batch_stats = {"img": updates.get("batch_stats", {})}
    else:
      z = apply(variables, images, train=False)
    return l2_normalize(z), batch_stats

  def _image_apply(self, params: Params, batch_stats: Any, generated: Any | None) -> tuple[Any, dict[str, Any]]:
    """(the image tower's apply under `generated`, its variables)."""
    variables = {"params": params["img"], "batch_stats": batch_stats["img"]}
    apply = self.image.apply
    if generated is not None and self.lowrank is not None:
      apply = functools.partial(lowrank_lib.apply, self.image, fac=generated, target=self.lowrank)
    elif generated is not None:
      variables[layers.GENERATED] = generated
    return apply, variables

  def image_moments(self, params: Params, batch_stats: Any, images: Array, generated: Any | None = None) -> Any:
    """images [B, H, W, 3] as one group, every BatchNorm normalising with this batch's statistics (as in
    training; no dropout) -> per BatchNorm {'mean', 'sq'} [C]: its input's mean and mean square over the batch,
    in batch_stats['img']'s tree ({} without BatchNorms). evaluators/recalibrate.py re-estimates running
    stats from them."""
    apply, variables = self._image_apply(params, batch_stats, generated)
    _, moments = apply(variables, images[None], train=False, mutable=[layers.RECALIBRATE])
    return moments.get(layers.RECALIBRATE, {})

  def static_image_variables(self, params: Params, batch_stats: Any, generated: Any | None) -> dict[str, Any]:
    """The image tower's eval variables for one generated set (leaves [1, ...]), as models/fold.py folds them:
    norm variants carry it as the 'generated' collection, linear / conv bake U Vᵀ into the target kernel."""
    variables = {"params": params["img"], "batch_stats": batch_stats["img"]}
    if generated is not None and self.lowrank is not None:
      variables["params"] = lowrank_lib.fold_into(params["img"], generated, self.lowrank)
    elif generated is not None:
      variables[layers.GENERATED] = generated
    return variables

  # ---- the training forward --------------------------------------------------------------------------------
  def __call__(self, params: Params, batch_stats: Any, images: Array, tokens: Array, train: bool = True,
               rng: Array | None = None) -> tuple[Array, Array, Any]:
    """images [B, H, W, 3], tokens [B, L] -> (zimg [B, D], ztxt [B, D], new batch_stats).

    The batch forms G = B / set_size groups of consecutive pairs; group g's images use the norm params
    generated from group g's captions.
    """
    b = images.shape[0]
    if b % self.set_size:
      raise ValueError(f"batch of {b} is not divisible by set_size={self.set_size}")
    g = b // self.set_size
    r_txt, r_img = jax.random.split(rng) if rng is not None else (None, None)
    del r_txt  # the text tower has no dropout yet
    ztxt = self.encode_text(params, tokens, train=train)  # [B, D]
    generated = self.generate(params, ztxt.reshape(g, self.set_size, -1))
    grouped = images.reshape((g, self.set_size) + images.shape[1:])
    zimg, batch_stats = self.encode_image(params, batch_stats, grouped, generated, train=train, rng=r_img)
    return zimg.reshape(b, -1), ztxt, batch_stats


def build_model(config: ml_collections.ConfigDict) -> TwoTowers:
  """Builds the two-tower model from config.model (+ data.image_size, data.max_len)."""
  m = config.model
  img_kw = {k: v for k, v in m.image.to_dict().items() if k != "name"}
  remat = bool(m.get("remat", False))  # per block, in both towers: less activation memory, more compute
  conv_impl = m.get("conv_impl", "auto")  # the convolutions' lowering (conv.Conv); same params and math
  encoder = models.build_image_encoder(m.image.name, dtype=jnp.dtype(m.dtype), remat=remat, conv_impl=conv_impl,
                                       **img_kw)
  image = ImageTower(encoder=encoder, embed_dim=m.embed_dim)
  text_kw = m.text.to_dict()
  preset = text_kw.pop("preset", None)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  text_kw.setdefault("pad_id", tokenizer.pad_id)  # the tower masks exactly the tokenizer's padding
  text = text_lib.build_text_tower(preset, out_dim=m.embed_dim, max_len=config.data.max_len,
                                   vocab_size=tokenizer.vocab_size, dtype=jnp.dtype(m.dtype), remat=remat,
                                   **text_kw)
  tt = TwoTowers(variant=m.variant, image=image, text=text, hyper=None, set_size=m.hyper.set_size,
                 image_size=config.data.image_size, max_len=config.data.max_len,
                 t_init=m.t_init, b_init=m.b_init)
  if m.variant != "siglip":
    template = tt.generated_template()
    if m.variant in lowrank_lib.VARIANTS:
      rank = m.get("hyper_rank", 32)
      target = lowrank_lib.find_target(image, m.variant, config.data.image_size)
      tt = dataclasses.replace(tt, lowrank=target, hyper_rank=rank)
      template = lowrank_lib.template(target, rank)
    hyper_kw = {k: v for k, v in m.hyper.to_dict().items() if k != "set_size"}
    hyper = hypernet_lib.HyperNetwork.for_template(template, dtype=jnp.dtype(m.dtype), **hyper_kw)
    tt = dataclasses.replace(tt, hyper=hyper)
  return tt
