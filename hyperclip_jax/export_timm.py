"""--format timm: the image tower as a timm model (DIR/timm/), plus the zero-shot head it cannot hold.

Our logits are exp(t') * <normalize(P f(x)), c_k> + b: the image embedding is L2-normalised per image before the
dot product with the class embeddings c_k. A per-image normalisation is not a linear map, so no single
nn.Linear (timm's classifier) holds the head: folding exp(t') c_k P into one Linear keeps the ranking of the
classes for each image (top-1 agrees) but not the logits, which then scale with |P f(x)|. So DIR/timm/ holds:

  model.safetensors  timm's state dict of the encoder, BatchNorm statistics and the hypernet's generated
                     scale/bias baked into the norms' weight/bias; timm's classifier = our projection P (no bias
                     used: zeros), so the model outputs the image embedding [N, D] (num_classes = D)
  config.json        timm's pretrained-config keys (architecture, num_classes, input_size, mean, std,
                     interpolation, crop_pct, ...), model_args, label_names and the head formula
  head.safetensors   classes [C, D] (L2-normalised class embeddings), scale = exp(t'), bias = b (scalars)

and in PyTorch (docs/deploy.md):
  model = timm.create_model(arch, pretrained=True, num_classes=D, **model_args,
                            pretrained_cfg_overlay=dict(pretrained_cfg, file=".../model.safetensors"))
  logits = F.normalize(model(x), dim=-1) @ head["classes"].T * head["scale"] + head["bias"]

The mapping is convert_timm's (timm -> ours) read backwards. Writing needs numpy only (the safetensors layout is
written here: 8-byte header length, JSON header, raw little-endian data). The check runs timm in a separate
Python that has torch and timm (timm_reference.py, as a subprocess), because this package never imports torch.
A scaled encoder (width/depth multipliers, explicit widths) has no timm name and is refused.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax import export_parity
from hyperclip_jax.models import convert_timm, fold

DIR = "timm"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HEAD = "head.safetensors"
PYTHON_ENV = "HYPERCLIP_TIMM_PYTHON"
DEFAULT_PYTHON = os.path.join(".venv-golden", "bin", "python")  # the Makefile's torch venv (make golden)
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_reference.py")
FORMULA = 'logits = F.normalize(model(x), dim=-1) @ head["classes"].T * head["scale"] + head["bias"]'
# Image-config keys that change the architecture, with the value that keeps timm's; any other value is refused.
ARCH_DEFAULTS = {"width_mult": 1.0, "depth_mult": 1.0, "head_features": None, "width": None, "depth": None,
                 "heads": None, "mlp_dim": None, "patch_size": 16}
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


class TimmExportError(ValueError):
  """The run cannot be written or checked as a timm model; the message says why and what to do."""


# ---- the safetensors layout (https://github.com/huggingface/safetensors#format) ------------------------------
def save_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes {name: float32 | int64 array} as a .safetensors file (tensors in the given order)."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  blobs, offset = [], 0
  for name, value in tensors.items():
    value = np.asarray(value, order="C")  # (ascontiguousarray would make a scalar 1-D)
    if value.dtype not in _DTYPES:
      raise TimmExportError(f"safetensors: {name} has dtype {value.dtype}; only float32 and int64 are written")
    data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": _DTYPES[value.dtype], "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for data in blobs:
      f.write(data)


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file written by save_safetensors (F32 / I64 tensors) into numpy arrays."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  header.pop("__metadata__", None)
  kinds = {v: k for k, v in _DTYPES.items()}
  out = {}
  for name, h in header.items():
    begin, end = h["data_offsets"]
    out[name] = np.frombuffer(data[begin:end], kinds[h["dtype"]].newbyteorder("<")).reshape(h["shape"]).copy()
  return out


# ---- ours -> timm ---------------------------------------------------------------------------------------------
def refuse_scaled(image_config: Mapping[str, Any]) -> None:
  """Raises TimmExportError for an encoder timm has no name for (multipliers or widths off timm's defaults)."""
  name = image_config.get("name", "")
  if not name.startswith(("efficientnet_", "tinynet_", "mobilenetv3_", "vit_")):
    raise TimmExportError(f"--format timm: encoder {name!r} has no timm mapping; use --format stablehlo,onnx")
  off = [f"{k}={image_config[k]}" for k, v in ARCH_DEFAULTS.items() if image_config.get(k, v) != v]
  if off:
    raise TimmExportError(
        f"--format timm: {name} with {', '.join(off)} has no timm name (timm's {name} builder fixes its "
        "multipliers and takes none through create_model's model_args); export an unscaled encoder, or use "
        "--format stablehlo,onnx")


def _prefix_fn(name: str) -> Callable[[tuple[str, ...]], str]:
  if name.startswith(("efficientnet_", "tinynet_")):
    return convert_timm._efficientnet_prefix
  if name.startswith("vit_"):
    return convert_timm._vit_prefix
  return convert_timm._blocks_prefix


def effective_variables(model: Any, params: Any, batch_stats: Any, generated: Any) -> dict[str, Any]:
  """The image tower's eval variables for one generated set, with the generated norm params baked into each
  norm's scale/bias (no 'generated' collection left): a plain encoder timm can hold."""

  variables = model.static_image_variables(params, batch_stats, generated)
  norms = fold.trace_norms(model.image, variables, model.image_size)
  p = jax.tree.map(np.asarray, jax.device_get(variables["params"]))
  gen = jax.device_get(variables.get("generated"))
  for norm in norms:
    scale, bias = fold._effective_affine(norm, p, gen)
    fold._get(p, norm.path).update(scale=np.asarray(scale), bias=np.asarray(bias))
  stats = jax.tree.map(np.asarray, jax.device_get(variables.get("batch_stats") or {}))
  return {"params": p, "batch_stats": stats}


def to_timm_state_dict(name: str, variables: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
  """Our ImageTower variables {'params': {'encoder', 'head'}, 'batch_stats': {'encoder'}} -> (timm state dict
  with the projection as the classifier, the classifier's module name)."""
  prefix_of = _prefix_fn(name)
  out: dict[str, np.ndarray] = {}
  bn_modules: list[str] = []

  def walk(collection: str, tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, sub in tree.items():
      if isinstance(sub, Mapping):
        walk(collection, sub, path + (key,))
        continue
      prefix = prefix_of(path)
      leaf = convert_timm._LEAF_NAMES.get((collection, key), key)
      value = np.asarray(sub, np.float32)
      if key == "kernel":
        value = np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value.T  # HWIO -> OIHW, [in,out] -> [out,in]
      out[f"{prefix}.{leaf}" if prefix else leaf] = np.ascontiguousarray(value)
      if collection == "batch_stats" and key == "var":
        bn_modules.append(prefix)

  walk("params", variables["params"]["encoder"], ())
  walk("batch_stats", variables.get("batch_stats", {}).get("encoder", {}), ())
  for prefix in bn_modules:  # timm's BatchNorms carry a counter; unused in eval
    out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
  classifier = "head" if name.startswith("vit_") else "classifier"
  projection = np.asarray(variables["params"]["head"]["kernel"], np.float32)  # [F, D]
  out[f"{classifier}.weight"] = np.ascontiguousarray(projection.T)
  out[f"{classifier}.bias"] = np.zeros(projection.shape[1], np.float32)
  return out, classifier


def timm_config(name: str, image_config: Mapping[str, Any], input_size: int, embed_dim: int, num_features: int,
                classifier: str, class_names: Sequence[str]) -> dict[str, Any]:
  """config.json: timm's layout (architecture, num_classes, pretrained_cfg, label_names) plus our head."""
  vit = name.startswith("vit_")
  model_args = {"dynamic_img_size": True, "img_size": int(image_config.get("image_size", 224))} if vit else {}
  return {
      "architecture": name, "num_classes": int(embed_dim), "num_features": int(num_features),
      "global_pool": "token" if vit else "avg", "model_args": model_args,
      "pretrained_cfg": {
          "input_size": [3, int(input_size), int(input_size)], "fixed_input_size": False,
          "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
          "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],  # (x/255 - 0.5)/0.5: our value_range(-1, 1)
          "num_classes": int(embed_dim), "classifier": classifier,
          "custom_load": False,  # a plain state dict (timm's ViT configs point at Google's .npz loader)
          "first_conv": "patch_embed.proj" if vit else "conv_stem"},
      "label_names": list(class_names),
      "hyperclip_head": {"file": HEAD, "num_classes": len(class_names), "formula": FORMULA,
                         "why": "the image embedding is L2-normalised per image before the class dot product; "
                                "no single Linear holds that"},
  }


# ---- the check: timm in its own Python ------------------------------------------------------------------------
def find_python(explicit: str | None = None) -> str | None:
  """The Python with torch + timm: explicit, else $HYPERCLIP_TIMM_PYTHON, else ./.venv-golden; None if none."""
  if explicit:
    if not os.access(explicit, os.X_OK):
      raise TimmExportError(f"--timm-python {explicit!r} is not an executable Python; create the torch venv with "
                            "make .venv-golden/.installed and pass .venv-golden/bin/python")
    return explicit
  for candidate in (os.environ.get(PYTHON_ENV), DEFAULT_PYTHON):
    if candidate and os.access(candidate, os.X_OK):
      return os.path.abspath(candidate)
  return None


def run_reference(python: str, timm_dir: str, images: np.ndarray, timeout: float = 600) -> tuple[np.ndarray, dict]:
  """Logits of timm.create_model + the written files (timm_reference.py under `python`) -> (logits, versions)."""
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "images.npy"), os.path.join(tmp, "logits.npy")
    np.save(src, images)
    proc = subprocess.run([python, REFERENCE, timm_dir, src, dst], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
      tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      raise TimmExportError(f"--format timm: the timm check failed under {python}: {tail}")
    return np.load(dst), json.loads(proc.stdout.strip().splitlines()[-1])


def check(timm_dir: str, reference: Callable[[Any], Any], input_size: int, python: str) -> dict[str, Any]:
  """timm's logits vs the jax artifact's on the check images; raises TimmExportError past export_parity's
  tolerance."""
  images = export_parity.check_images(input_size)
  got, versions = run_reference(python, timm_dir, images)
  return export_parity.compare("--format timm: the timm model with timm/head.safetensors", got, reference(images),
                               TimmExportError, **versions)


def write(out_dir: str, model: Any, params: Any, batch_stats: Any, zcls: np.ndarray, zsets: Any,
          image_config: Mapping[str, Any], class_names: Sequence[str], reference: Callable[[Any], Any],
          python: str | None) -> dict[str, Any]:
  """Writes out_dir/timm/ and checks it when a torch Python is given; returns the manifest's formats.timm entry.
  Without one the files are written and the entry says the check was not run (and how to run it)."""
  refuse_scaled(image_config)
  name = image_config["name"]
  generated = model.generate_mean(params, jnp.asarray(zcls)[None] if zsets is None else jnp.asarray(zsets))
  variables = effective_variables(model, params, batch_stats, generated)
  state, classifier = to_timm_state_dict(name, variables)
  projection = np.asarray(variables["params"]["head"]["kernel"])
  timm_dir = os.path.join(out_dir, DIR)
  os.makedirs(timm_dir, exist_ok=True)
  save_safetensors(os.path.join(timm_dir, WEIGHTS), state)
  save_safetensors(os.path.join(timm_dir, HEAD), {
      "classes": np.asarray(zcls, np.float32), "scale": np.asarray(np.exp(params["t"]), np.float32),
      "bias": np.asarray(params["b"], np.float32)})
  config = timm_config(name, image_config, model.image_size, projection.shape[1], projection.shape[0], classifier,
                       class_names)
  with open(os.path.join(timm_dir, CONFIG), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  entry = {"dir": DIR, "files": [WEIGHTS, CONFIG, HEAD], "architecture": name, "num_classes": config["num_classes"],
           "model_args": config["model_args"], "head": FORMULA}
  if python is None:
    entry["check"] = {"status": "not run", "reason": "no Python with torch + timm; run `make .venv-golden/.installed`"
                      " and export again with --timm-python .venv-golden/bin/python"}
    return entry
  try:
    entry["check"] = {"status": "passed", **check(timm_dir, reference, model.image_size, python)}
  except (TimmExportError, subprocess.TimeoutExpired, OSError, ValueError) as e:
    shutil.rmtree(timm_dir, ignore_errors=True)
    raise TimmExportError(str(e).splitlines()[0]) from None
  return entry

