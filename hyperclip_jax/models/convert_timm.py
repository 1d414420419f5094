"""timm -> Flax weight conversion: from_timm(name, state_dict) gives {'params', 'batch_stats'}.

The state dict is timm's full `model.state_dict()` as numpy arrays; classifier weights and
`num_batches_tracked` entries are ignored. Used to start from ImageNet-pretrained small encoders, and by the
tests as the proof that our architectures match timm's one to one.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax.models import build_image_encoder

# ---- shared helpers (owned by the EfficientNet change) ----------------------------------------------------
# Conversion is driven by our own variable tree: `_template` gives every leaf's path and shape (no compute),
# a family's `prefix_of` names the timm module that holds it, and `_convert_by_prefix` fetches, transposes and
# shape-checks each entry, then insists every state-dict entry was used.


def _to_numpy(value: Any) -> np.ndarray:
  """A state-dict value (numpy array, or a torch tensor on any device) as a numpy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _torch_conv_to_hwio(w: np.ndarray) -> np.ndarray:
  """torch conv weight [O, I/g, kh, kw] -> flax kernel [kh, kw, I/g, O]."""
  return np.transpose(w, (2, 3, 1, 0))


def _torch_linear_to_flax(w: np.ndarray) -> np.ndarray:
  """torch linear weight [out, in] -> flax kernel [in, out]."""
  return np.transpose(w)


def _template(name: str, **overrides: Any) -> dict[str, Any]:
  """Shapes of encoder `name`'s variables (all collections) from an abstract init: nothing is computed."""
  model = build_image_encoder(name, **overrides)
  size = max(model.min_size, 32)
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))


class _StateDictReader:
  """Hands out state-dict entries, checking shapes; `finish` rejects entries that were never taken."""

  def __init__(self, name: str, state_dict: Mapping[str, Any], ignore_prefixes: tuple[str, ...] = ()):
    self.name, self.sd, self.ignore_prefixes = name, state_dict, ignore_prefixes
    self.taken: set[str] = set()

  def take(self, key: str, shape: tuple[int, ...], transform: Any = None, path: str = "") -> np.ndarray:
    if key not in self.sd:
      raise ValueError(f"{self.name}: state dict has no entry {key!r} (needed for {path or key}, shape "
                       f"{tuple(shape)}); is it a state dict of timm's {self.name}?")
    raw = _to_numpy(self.sd[key])
    value = transform(raw) if transform is not None else raw
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"{self.name}: state dict entry {key!r} has shape {tuple(raw.shape)} but {path or key} "
                       f"needs {tuple(shape)} (after conversion: {tuple(value.shape)})")
    self.taken.add(key)
    return value.astype(np.float32)

  def finish(self) -> None:
    left = sorted(k for k in self.sd if k not in self.taken and not k.endswith("num_batches_tracked")
                  and not k.startswith(self.ignore_prefixes))
    if left:
      more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
      raise ValueError(f"{self.name}: unexpected state dict entries {', '.join(left[:5])}{more}; "
                       f"is it a state dict of timm's {self.name}?")


# Our leaf name -> timm parameter name, per collection; a 4-D kernel is a conv, a 2-D kernel a linear.
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _kernel_transform(ndim: int) -> Any:
  return {4: _torch_conv_to_hwio, 2: _torch_linear_to_flax}.get(ndim)


def _convert_by_prefix(name: str, state_dict: Mapping[str, Any], prefix_of: Any,
                       ignore_prefixes: tuple[str, ...] = ("classifier.",), **overrides: Any) -> dict[str, Any]:
  """Fills our `params` and `batch_stats` from a timm state dict.

  `prefix_of(module_path)` maps our module path (a tuple of names, e.g. ('blocks_1_0', 'conv_pw')) to timm's
  module prefix ('blocks.1.0.conv_pw'); the leaf becomes weight/bias/running_mean/running_var (any other leaf
  name is used as is, e.g. a 'pos_embed' at the root with prefix '').
  """
  template = _template(name, **overrides)
  reader = _StateDictReader(name, state_dict, ignore_prefixes)

  def convert(collection: str, tree: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key, sub in tree.items():
      if isinstance(sub, Mapping):
        out[key] = convert(collection, sub, path + (key,))
        continue
      prefix = prefix_of(path)
      leaf = _LEAF_NAMES.get((collection, key), key)
      timm_key = f"{prefix}.{leaf}" if prefix else leaf
      transform = _kernel_transform(len(sub.shape)) if key == "kernel" else None
      out[key] = reader.take(timm_key, sub.shape, transform, f"{collection}/{'/'.join(path + (key,))}")
    return out

  variables = {c: convert(c, template[c], ()) for c in ("params", "batch_stats") if c in template}
  reader.finish()
  return variables


# ---- EfficientNet / TinyNet --------------------------------------------------------------------------------
# timm names: conv_stem, bn1, blocks.{stage}.{block}.{conv_pw, bn1, conv_dw, bn2, se.conv_reduce,
# se.conv_expand, conv_pwl, bn3} (DS blocks: conv_dw, bn1, se, conv_pw, bn2), conv_head, bn2, classifier.
# Ours are the same below blocks_{stage}_{block}; only the stem and head are renamed.
_EFFICIENTNET_RENAMES = {("stem", "conv"): "conv_stem", ("stem", "bn"): "bn1",
                         ("head", "conv"): "conv_head", ("head", "bn"): "bn2"}


def _efficientnet_prefix(path: tuple[str, ...]) -> str:
  if path in _EFFICIENTNET_RENAMES:
    return _EFFICIENTNET_RENAMES[path]
  if path and path[0].startswith("blocks_"):
    return ".".join(path[0].split("_") + list(path[1:]))
  raise ValueError(f"no timm name for EfficientNet module {'/'.join(path)}")


def _from_timm_efficientnet(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
  """timm efficientnet_b0..b2 / tinynet_a..e state dict -> our variables (overrides: e.g. width_mult)."""
  return _convert_by_prefix(name, state_dict, _efficientnet_prefix, ("classifier.",), **overrides)


# ---- MobileNetV3 -------------------------------------------------------------------------------------------
# timm names: conv_stem, bn1, blocks.{stage}.{block}.{conv_dw, bn1, se.conv_reduce, se.conv_expand, conv_pw,
# bn2, conv_pwl, bn3} (the last stage's ConvBnAct: conv, bn1), conv_head (with bias; no norm), classifier.
# Ours are the same names, with blocks_{stage}_{block} for blocks.{stage}.{block}.


def _blocks_prefix(path: tuple[str, ...]) -> str:
  """('blocks_2_1', 'se', 'conv_reduce') -> 'blocks.2.1.se.conv_reduce'; other paths joined as they are."""
  if path and path[0].startswith("blocks_"):
    return ".".join(path[0].split("_") + list(path[1:]))
  return ".".join(path)


def _from_timm_mobilenetv3(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
  """timm mobilenetv3_{small,large}_100 state dict -> our variables (overrides: e.g. width_mult)."""
  return _convert_by_prefix(name, state_dict, _blocks_prefix, ("classifier.",), **overrides)


# ---- ViT ---------------------------------------------------------------------------------------------------
# timm names: cls_token [1, 1, D], pos_embed [1, 1 + N, D], patch_embed.proj, blocks.{i}.{norm1, attn.qkv,
# attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head. Ours: the same, with blocks_{i} and patch_embed (the conv).


def _vit_prefix(path: tuple[str, ...]) -> str:
  return "patch_embed.proj" if path == ("patch_embed",) else _blocks_prefix(path)


def _from_timm_vit(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
  """timm vit_{tiny,small,base}_patch16_224 state dict -> our {'params'} (overrides: e.g. image_size=384)."""
  return _convert_by_prefix(name, state_dict, _vit_prefix, ("head.",), **overrides)


def from_timm(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a timm state dict of encoder `name` into Flax variables {'params': ..., 'batch_stats': ...}."""
  if name.startswith(("efficientnet_", "tinynet_")):
    return _from_timm_efficientnet(name, state_dict)
  if name.startswith("mobilenetv3_"):
    return _from_timm_mobilenetv3(name, state_dict)
  if name.startswith("vit_"):
    return _from_timm_vit(name, state_dict)
  raise ValueError(f"no timm conversion for encoder {name!r}; known families: efficientnet_*, tinynet_*, "
                   "mobilenetv3_*, vit_*")
