"""Text tower: a pre-LN transformer over token ids, CLIP-style (causal, 'eot' pooling) or SigLIP-style.

Padding is handled by masks, never by the caller: keys equal to `pad_id` are masked out of every attention
(AND a causal mask when `causal`), so appending pad tokens leaves 'eot', 'first' and 'map' outputs unchanged.
The output is the pooled, projected embedding [B, out_dim]; the two-tower model L2-normalises it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

POOLS = ("eot", "last", "first", "map")

# Architecture presets. vocab_size and max_len must match the tokenizer; override them when they differ.
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # PAPER.md: CLIP-style causal, width 768, 8 heads, MLP 2560. Depth is not stated; 12 is our choice.
    # Vocabulary and length are CLIP BPE's (49,408 tokens, 77 positions).
    "paper": dict(width=768, depth=12, heads=8, mlp_dim=2560, causal=True, pool="eot",
                  vocab_size=49408, max_len=77),
    # SigLIP B text tower (big_vision): bidirectional, pooled at the last position (sticky EOS padding),
    # 32k sentencepiece vocabulary, 64 tokens.
    "siglip_b": dict(width=768, depth=12, heads=12, mlp_dim=3072, causal=False, pool="last",
                     vocab_size=32000, max_len=64),
    # Tests and the CPU demo.
    "tiny": dict(width=64, depth=2, heads=2, mlp_dim=128, causal=True, pool="eot", vocab_size=1024, max_len=32),
}

_dense_init = nn.initializers.xavier_uniform()


class Mlp(nn.Module):
  """Dense -> GELU (exact, as PyTorch's default) -> Dense back to the input width."""
  mlp_dim: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    h = nn.gelu(h, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x), mask), then x + MLP(LN(x)). Shared with the hypernetwork.

  `mask` is a boolean [..., 1 or heads, Lq, Lk] attention mask (True = attend), or None.
  """
  heads: int
  mlp_dim: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    y = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, kernel_init=_dense_init, deterministic=True,
        name="attn")(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
    return x + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class MapHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over the sequence (padding masked), + MLP."""
  heads: int
  mlp_dim: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, key_mask: Array) -> Array:  # x [B, L, W], key_mask [B, L] -> [B, W]
    b, _, w = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, w), jnp.float32)
    q = jnp.broadcast_to(probe, (b, 1, w)).astype(x.dtype)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, kernel_init=_dense_init, deterministic=True,
        name="attn")(q, x, mask=key_mask[:, None, None, :])  # [B, 1, W]
    y = y + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(nn.LayerNorm(dtype=self.dtype, name="ln")(y))
    return y[:, 0]


class TextTransformer(nn.Module):
  """Token ids [B, L] -> text embedding [B, out_dim] (or [B, width] when out_dim is None); not normalised.

  Pooling: 'eot' = the last non-pad token of each row (CLIP; our tokenizers end a caption with EOS then
  pad), 'last' = position L-1 (SigLIP, right with sticky EOS padding), 'first' = position 0, 'map' =
  attention pooling with a learned probe. A row of only padding gives a finite (meaningless) output.
  `train` is accepted for a uniform call signature; the tower has no dropout, so it changes nothing.
  Parameters are float32; `dtype` is the compute dtype. The output is float32.
  Field defaults are the 'paper' preset.
  """
  vocab_size: int = 49408
  width: int = 768
  depth: int = 12
  heads: int = 8
  mlp_dim: int = 2560
  max_len: int = 77
  causal: bool = True
  pool: str = "eot"
  out_dim: int | None = None
  pad_id: int = 0
  dtype: Dtype | None = None
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False) -> Array:
    del train  # no dropout
    if self.pool not in POOLS:
      raise ValueError(f"text pool {self.pool!r} is unknown; known: {', '.join(POOLS)}")
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"text tokens must be integer ids [B, L]; got {tokens.dtype} {tuple(tokens.shape)}")
    b, l = tokens.shape
    if l > self.max_len:
      raise ValueError(f"text has {l} tokens but the tower has max_len={self.max_len}: truncate the text "
                       f"in the tokenizer or raise max_len")
    if l == 0:
      raise ValueError("text tokens have length 0: every caption needs at least one token")

    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embed")(tokens)  # [B, L, W]
    pos = self.param("pos_embed", nn.initializers.normal(0.01), (self.max_len, self.width), jnp.float32)
    x = (x + pos[:l]).astype(self.dtype or jnp.float32)

    key_mask = tokens != self.pad_id  # [B, L]
    mask = key_mask[:, None, None, :]  # [B, 1, Lq=1, Lk]
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((l, l), bool))[None, None]  # [B, 1, L, L]
    block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block(self.heads, self.mlp_dim, dtype=self.dtype, name=f"block_{i}")(x, mask)
    x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)  # [B, L, W]

    if self.pool == "eot":
      # The last non-pad position (0 for an all-pad row).
      idx = jnp.max(jnp.where(key_mask, jnp.arange(l)[None, :], 0), axis=1)  # [B]
      pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    elif self.pool == "last":
      pooled = x[:, -1]
    elif self.pool == "first":
      pooled = x[:, 0]
    else:
      pooled = MapHead(self.heads, self.mlp_dim, dtype=self.dtype, name="map_head")(x, key_mask)
    if self.out_dim is not None:
      pooled = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                        kernel_init=nn.initializers.normal(self.width ** -0.5), name="proj")(pooled)
    return pooled.astype(jnp.float32)  # [B, out_dim]


def build_text_tower(preset: str | None = None, **overrides: Any) -> TextTransformer:
  """A TextTransformer from a TEXT_PRESETS name (None = the field defaults, i.e. 'paper') plus overrides.

  e.g. build_text_tower('tiny', vocab_size=tokenizer.vocab_size, out_dim=128).
  """
  kw: dict[str, Any] = {}
  if preset is not None:
    if preset not in TEXT_PRESETS:
      raise ValueError(f"text preset {preset!r} is unknown; known: {', '.join(sorted(TEXT_PRESETS))}")
    kw.update(TEXT_PRESETS[preset])
  fields = set(TextTransformer.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"text tower option(s) {', '.join(unknown)} unknown; known: {', '.join(sorted(fields))}")
  kw.update(overrides)
  return TextTransformer(**kw)


__all__ = ["EncoderBlock", "MapHead", "Mlp", "POOLS", "TEXT_PRESETS", "TextTransformer", "build_text_tower"]
