"""hyperclip-export: a trained run -> a static, folded zero-shot image classifier; `load_classifier` runs it.

  hyperclip-export --workdir runs/demo --classes demo:colour --out runs/demo/export_colour
  hyperclip-export --workdir RUN --classes imagenet1k|cifar100|cifar10|classes.txt [--templates FILE] --out DIR

The text tower and hypernet run once, here, over the class prompts (or, with --condition train_sets_mean, over
sets of training captions whose generated norm params are averaged: hyperclip-eval's condition of that name);
BatchNorm running statistics (with --recalibrate-bn N, re-estimated under those norm params over N held-out
training images, as hyperclip-eval's zero-shot recalibrate_bn) and the generated scale/bias are folded into the convolutions before them (ViTs
keep their LayerNorms with the generated values baked in). DIR then holds:
  classifier.jaxexport  serialized jax.export artifact (StableHLO, weights embedded): uint8 images
                        [N, S, S, 3] -> logits [N, C], any N
  params/               the folded parameters, class embeddings and t, b as an Orbax checkpoint
  classes.json          the class names, in logit order
  manifest.json         model, input size, preprocessing, temperature/bias, source step, config hash
  classifier.onnx       with --format ...,onnx (export_onnx); classifier.tflite with --format ...,tflite and
                        classifier_int8.tflite with --tflite-int8 N too (export_tflite: TensorFlow, here or
                        in --tflite-python, e.g. `make tflite`'s .venv-tflite); each checked against the jax artifact
  timm/                 with --format ...,timm: timm state dict, config.json, head.safetensors (export_timm),
                        checked in a Python with torch + timm (--timm-python) or marked unchecked

`load_classifier(DIR)` needs only jax and numpy: it deserializes the artifact and never builds the model
(this module imports Flax and the model code only inside the export functions).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax import storage

ARTIFACT = "classifier.jaxexport"
MANIFEST = "manifest.json"
CLASSES = "classes.json"
PARAMS = "params"
FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export can lower for


class ExportError(ValueError):
  """A classifier that cannot be exported or loaded; the message says what to do."""


# ---- loading: jax + numpy only --------------------------------------------------------------------------------
class Classifier:
  """A loaded exported classifier: `clf(images uint8 [N, S, S, 3]) -> logits float32 [N, C]`."""

  def __init__(self, directory: str):
    for name in (MANIFEST, CLASSES, ARTIFACT):
      if not os.path.isfile(os.path.join(directory, name)):
        raise ExportError(f"{directory!r} is not an exported classifier (no {name}); write one with "
                          "hyperclip-export --workdir RUN --classes ... --out DIR")
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
      self.manifest: dict[str, Any] = json.load(f)
    with open(os.path.join(directory, CLASSES), encoding="utf-8") as f:
      self.classes: list[str] = json.load(f)
    with open(os.path.join(directory, ARTIFACT), "rb") as f:
      self._exported = jax.export.deserialize(bytearray(f.read()))
    self._call = jax.jit(self._exported.call)  # compiled once per batch size, not re-wrapped on every call
    self.input_size: int = int(self.manifest["input_size"])
    self.directory = directory

  def __call__(self, images: Any) -> np.ndarray:
    images = np.asarray(images)
    s = self.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3) or not images.shape[0]:
      raise ValueError(f"images must be uint8 [N, {s}, {s}, 3] (RGB); got {images.dtype} {list(images.shape)}: "
                       f"resize to {s}x{s} first (hyperclip-predict does)")
    return np.asarray(self._call(images))

  def scores(self, logits: np.ndarray) -> np.ndarray:
    """Logits -> per-class scores: sigmoid (SigLIP-trained) or softmax over the classes (CLIP-trained)."""
    logits = np.asarray(logits, np.float64)
    if self.manifest.get("score") == "softmax":
      e = np.exp(logits - logits.max(-1, keepdims=True))
      return e / e.sum(-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def load_classifier(directory: str) -> Classifier:
  """Loads an exported classifier directory (see the module docstring); needs only jax and numpy."""
  return Classifier(directory)


# ---- exporting: builds the model ------------------------------------------------------------------------------
def class_embeddings(model: Any, params: Any, tokenizer: Any, max_len: int, class_names: Sequence[str],
                     templates: Sequence[str], chunk: int = 512) -> np.ndarray:
  """Per-class mean of the templated prompt embeddings, renormalised: [C, D] (prompts encoded in chunks)."""
  from hyperclip_jax.models import two_towers
  texts = [t.format(c) for c in class_names for t in templates]
  tokens = tokenizer.encode(texts, max_len)  # [C·T, L]
  n = len(texts)
  chunk = min(chunk, n)
  encode = jax.jit(model.encode_text)
  out = []
  for start in range(0, n, chunk):
    part = tokens[start:start + chunk]
    pad = chunk - len(part)  # one compiled shape for every chunk
    part = np.concatenate([part, np.repeat(part[:1], pad, 0)]) if pad else part
    out.append(np.asarray(encode(params, jnp.asarray(part)))[:chunk - pad])
  z = np.concatenate(out).reshape(len(class_names), len(templates), -1)
  return np.asarray(two_towers.l2_normalize(jnp.asarray(z.mean(1))))


CONDITIONS = ("classes", "train_sets_mean")  # what the hypernet reads at export (evaluators.CONDITIONS' names)


def unfolded_logits(model: Any, params: Any, batch_stats: Any, zcls: Any, images: Any,
                    zsets: Any = None) -> jax.Array:
  """The reference: zero-shot logits of the unfolded model (eval mode) for float images [N, S, S, 3] in [-1, 1];
  the hypernet reads zsets [K, S, D] (default: the class set)."""
  generated = model.generate_mean(params, jnp.asarray(zcls)[None] if zsets is None else jnp.asarray(zsets))
  zimg, _ = model.encode_image(params, batch_stats, images[None], generated, train=False)
  return jnp.exp(params["t"]) * zimg[0] @ jnp.asarray(zcls).T + params["b"]


def fold_classifier(model: Any, params: Any, batch_stats: Any, zcls: np.ndarray,
                    zsets: Any = None) -> tuple[Any, Any]:
  """-> (folded image-tower params, fn(folded, uint8 images [N, S, S, 3]) -> logits [N, C]); the hypernet reads
  zsets [K, S, D] (default: one set, the task's classes)."""
  from hyperclip_jax.models import fold, two_towers
  generated = model.generate_mean(params, jnp.asarray(zcls)[None] if zsets is None else jnp.asarray(zsets))
  variables = model.static_image_variables(params, batch_stats, generated)
  norms = fold.trace_norms(model.image, variables, model.image_size)
  folded = fold.fold(norms, variables)
  t, b, zc = np.exp(np.asarray(params["t"])), np.asarray(params["b"]), np.asarray(zcls)

  def logits(folded, images):
    x = images.astype(jnp.float32) * (2.0 / 255.0) - 1.0  # the value_range(-1, 1) of training
    zimg = two_towers.l2_normalize(fold.apply_folded(model.image, norms, folded, x))  # [N, D]
    return t * zimg @ zc.T + b  # [N, C]

  return folded, logits


RECALIBRATE_BATCH = 256  # held-out images per forward of --recalibrate-bn


def _recalibrated(config: Any, model: Any, params: Any, batch_stats: Any, zcls: Any, zsets: Any, n: int) -> Any:
  """batch_stats re-estimated under the norm params fold_classifier folds in, over n held-out training images."""
  from hyperclip_jax.evaluators import recalibrate
  try:
    images = recalibrate.heldout_images(config, n)
  except ValueError as e:
    raise ExportError(f"--recalibrate-bn {n}: {e}") from None
  generated = model.generate_mean(params, jnp.asarray(zcls)[None] if zsets is None else jnp.asarray(zsets))
  return recalibrate.reestimate(jax.jit(model.image_moments), params, batch_stats, generated, images,
                                min(n, RECALIBRATE_BATCH))


def export_classifier(run: Any, class_names: Sequence[str], templates: Sequence[str], out_dir: str,
                      platforms: Sequence[str] = ("cpu",), condition: str = "classes",
                      condition_sets: int = 64, formats: Sequence[str] = ("stablehlo",),
                      recalibrate_bn: int = 0, tflite_python: str | None = None,
                      tflite_int8: int = 0, timm_python: str | None = None) -> dict[str, Any]:
  """Writes the classifier of `run` (a workdir.Run) for `class_names` to out_dir; returns the manifest.

  condition: the hypernet reads the class prompts ('classes') or condition_sets sets of training captions,
  its norm params averaged ('train_sets_mean', as hyperclip-eval's condition of that name). recalibrate_bn=N:
  the BatchNorm running stats re-estimated under those norm params over N held-out training images before
  folding (hyperclip-eval's zero-shot setting of that name; evaluators/recalibrate.py). formats: the
  StableHLO artifact is always written; 'onnx' adds classifier.onnx, 'tflite' classifier.tflite (converted here
  or in tflite_python, a python with TensorFlow: export_tflite), each checked against it; tflite_int8=N adds
  an int8 file calibrated on N of the run's eval images for these classes, scored on the rest. 'timm' adds timm/
  (export_timm), checked with timm_python (default: $HYPERCLIP_TIMM_PYTHON or ./.venv-golden) or recorded as
  not checked when there is none. A model card (README.md, model_card) describes the result."""
  import orbax.checkpoint as ocp

  from hyperclip_jax.data import tokenizers
  from hyperclip_jax.models import two_towers
  if not class_names or len(set(class_names)) != len(class_names) or not all(str(c).strip() for c in class_names):
    raise ExportError(f"class names must be unique and non-empty; got {len(class_names)} names with "
                      f"{len(class_names) - len(set(class_names))} duplicate(s)")
  if not templates or any(t.count("{}") != 1 for t in templates):
    raise ExportError("every prompt template needs exactly one {} for the class name, e.g. 'a photo of a {}.'")
  if condition not in CONDITIONS:
    raise ExportError(f"condition {condition!r} is unknown; known: {', '.join(CONDITIONS)}")
  if condition_sets < 1:
    raise ExportError(f"condition_sets={condition_sets} must be at least 1")
  if recalibrate_bn < 0 or (recalibrate_bn > RECALIBRATE_BATCH and recalibrate_bn % RECALIBRATE_BATCH):
    raise ExportError(f"recalibrate_bn={recalibrate_bn} must be 0 (off), at most {RECALIBRATE_BATCH}, or a "
                      f"multiple of it")
  formats = parse_formats(",".join(formats))
  if "onnx" in formats:
    from hyperclip_jax import export_onnx
    try:
      export_onnx.require()
    except export_onnx.ConversionError as e:
      raise ExportError(str(e)) from None
  if tflite_int8 and "tflite" not in formats:
    raise ExportError("--tflite-int8 quantises the tflite file: add tflite to --format")
  if tflite_int8 < 0:
    raise ExportError(f"--tflite-int8 {tflite_int8} must be a count of representative images (0: no int8 file)")
  if "tflite" in formats:
    from hyperclip_jax import export_tflite
    try:
      tflite_python = export_tflite.resolve_python(tflite_python)
    except export_tflite.ConversionError as e:
      raise ExportError(str(e)) from None
  if "timm" in formats:
    from hyperclip_jax import export_timm
    try:
      export_timm.refuse_scaled(run.config.model.image.to_dict())
      timm_python = export_timm.find_python(timm_python)
    except export_timm.TimmExportError as e:
      raise ExportError(str(e)) from None
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown:
    raise ExportError(f"platform {unknown[0]!r} is unknown; known: {', '.join(PLATFORMS)}")
  config = run.config.copy_and_resolve_references()
  if "remat" in config.model:  # inference has no backward pass to save memory for; params are the same
    with config.unlocked():
      config.model.remat = False
  with config.unlocked():  # whatever the run trained with, each target platform gets its own conv form (auto):
    config.model.conv_impl = "auto"  # shift-add/dot forms on CPU, library convolutions on GPU/TPU
  pp = str(config.data.get("pp", "") or "")
  if "value_range" in pp and "value_range(-1, 1)" not in pp.replace("-1,1", "-1, 1"):
    raise ExportError(f"config.data.pp={pp!r} scales pixels other than value_range(-1, 1), which the exported "
                      "classifier assumes; export a run trained with value_range(-1, 1)")
  quant = None
  if tflite_int8:  # the run's own eval images: the first N calibrate, the others score
    from hyperclip_jax.evaluators import task_images
    try:
      task, images, labels = task_images.eval_images(config, class_names)
    except ValueError as e:
      raise ExportError(f"--tflite-int8: {e}") from None
    if len(images) <= tflite_int8:
      raise ExportError(f"--tflite-int8 {tflite_int8}: the eval task {task!r} has only {len(images)} images; "
                        "use fewer representative images so that some are left to score")
    quant = {"task": task, "representative": images[:tflite_int8], "images": images[tflite_int8:],
             "labels": labels[tflite_int8:]}
  model = two_towers.build_model(config)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  zcls = class_embeddings(model, params, tokenizer, config.data.max_len, class_names, templates)
  zsets = None
  if condition == "train_sets_mean" and model.hyper is not None:
    from hyperclip_jax import evaluators
    try:
      captions = evaluators.condition_captions(config, condition_sets)
    except ValueError as e:
      raise ExportError(f"condition {condition!r}: {e}") from None
    zset = class_embeddings(model, params, tokenizer, config.data.max_len, captions, ["{}"])
    zsets = zset.reshape(condition_sets, -1, zset.shape[-1])
  if recalibrate_bn:
    batch_stats = _recalibrated(config, model, params, batch_stats, zcls, zsets, recalibrate_bn)
  folded, logits = fold_classifier(model, params, batch_stats, zcls, zsets)
  s = model.image_size
  consts = jax.tree.map(jnp.asarray, folded)
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"n, {s}, {s}, 3"), jnp.uint8)
  exported = jax.export.export(jax.jit(lambda images: logits(consts, images)), platforms=tuple(platforms))(spec)

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, ARTIFACT), "wb") as f:
    f.write(exported.serialize())
  params_dir = os.path.abspath(os.path.join(out_dir, PARAMS))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, {"image": folded, "zcls": zcls, "t": np.asarray(params["t"]),
                                 "b": np.asarray(params["b"])}, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(out_dir, CLASSES), "w", encoding="utf-8") as f:
    json.dump(list(class_names), f, ensure_ascii=False, indent=0)
  manifest = {
      "format_version": FORMAT_VERSION,
      "model": {"variant": config.model.variant, "image_encoder": config.model.image.name,
                "image": config.model.image.to_dict(), "embed_dim": int(config.model.embed_dim),
                "dtype": config.model.dtype},
      "input_size": int(s),
      "input": f"uint8 RGB [N, {s}, {s}, 3]",
      "preprocessing": f"resize({s})|value_range(-1, 1)",
      "temperature": float(np.exp(np.asarray(params["t"]))), "bias": float(np.asarray(params["b"])),
      "logits": "temperature * <zimg, zclass> + bias",
      "score": "softmax" if config.loss.name == "softmax" else "sigmoid",
      "num_classes": len(class_names), "num_templates": len(templates), "templates": list(templates),
      "condition": condition if condition == "classes" else {condition: condition_sets},
      "recalibrate_bn": int(recalibrate_bn),
      "source": {"workdir": storage.resolve(run.workdir), "step": int(run.step), "config_hash": run.config_hash},
      "platforms": list(platforms), "jax_version": jax.__version__, "artifact": ARTIFACT,
      "formats": {"stablehlo": {"file": ARTIFACT, "platforms": list(platforms)}},
  }
  if "onnx" in formats or "tflite" in formats:  # traced with library convolutions (what ONNX / TFLite optimise)
    with config.unlocked():
      config.model.conv_impl = "native"
    native, native_logits = fold_classifier(two_towers.build_model(config), params, batch_stats, zcls, zsets)
  if "onnx" in formats:  # checked against the jax artifact
    try:
      manifest["formats"]["onnx"] = export_onnx.write(
          out_dir, lambda images: native_logits(native, images), s, jax.jit(exported.call))
    except export_onnx.ConversionError as e:
      raise ExportError(f"--format onnx: {e}") from None
  if "tflite" in formats:
    native_consts = jax.tree.map(jnp.asarray, native)
    cpu = jax.export.export(jax.jit(lambda images: native_logits(native_consts, images)), platforms=("cpu",))(spec)
    try:
      manifest["formats"]["tflite"] = export_tflite.write(out_dir, cpu.serialize(), s, jax.jit(exported.call),
                                                          tflite_python, quant)
    except export_tflite.ConversionError as e:
      raise ExportError(f"--format tflite: {e}") from None
  if "timm" in formats:  # the unfolded tower (BatchNorms kept, generated params baked in), as timm runs it
    try:
      manifest["formats"]["timm"] = export_timm.write(
          out_dir, model, params, batch_stats, zcls, zsets, config.model.image.to_dict(), list(class_names),
          jax.jit(exported.call), timm_python)
    except export_timm.TimmExportError as e:
      raise ExportError(str(e)) from None
  with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, ensure_ascii=False)
  from hyperclip_jax import model_card, model_dir
  try:
    metrics = model_dir.eval_metrics(run.workdir, int(run.step))
  except (OSError, ValueError):  # an unreadable metrics file costs the card its accuracy table only
    metrics = {}
  model_card.write(out_dir, manifest, list(class_names), metrics)
  return manifest


# ---- command line ---------------------------------------------------------------------------------------------
FORMATS = ("stablehlo", "onnx", "tflite", "timm")


def parse_formats(text: str) -> list[str]:
  """'stablehlo,onnx' -> ['stablehlo', 'onnx']; the StableHLO artifact is always among them (first)."""
  formats = [f.strip() for f in text.split(",") if f.strip()]
  for f in formats:
    if f not in FORMATS:
      raise ExportError(f"--format {f!r} is unknown; known: {', '.join(FORMATS)}")
  return list(dict.fromkeys(["stablehlo", *formats]))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="hyperclip-export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a hyperclip-train run directory, or a model directory (hyperclip-export --model-only)")
  parser.add_argument("--classes", default=None,
                      help="imagenet1k | cifar100 | cifar10 | demo:TASK | a UTF-8 file with one class name per line")
  parser.add_argument("--templates", default=None, help="UTF-8 file, one prompt template with {} per line")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  parser.add_argument("--model-only", action="store_true",
                      help="write the whole model (params, config, tokenizer; no optimizer state) instead of a "
                           "classifier: see hyperclip_jax.model_dir")
  parser.add_argument("--platforms", default=None,
                      help="comma-separated: cpu, cuda, rocm, tpu (default: this machine's backend, and cpu)")
  parser.add_argument("--format", default="stablehlo",
                      help=f"comma-separated: {', '.join(FORMATS)} (the StableHLO artifact is always written)")
  parser.add_argument("--tflite-python", default=None,
                      help="--format tflite: a python with TensorFlow and ai-edge-litert that converts (`make tflite` "
                           "makes .venv-tflite/bin/python; default: $HYPERCLIP_TFLITE_PYTHON, else this python)")
  parser.add_argument("--tflite-int8", type=int, default=0, metavar="N",
                      help="with --format tflite: also classifier_int8.tflite, calibrated on N of the run's eval "
                           "images for these classes, its top-1 change on the others in the manifest")
  parser.add_argument("--timm-python", default=None,
                      help="--format timm: a Python with torch + timm that checks the timm files (default: "
                           "$HYPERCLIP_TIMM_PYTHON, else .venv-golden/bin/python; none: written unchecked)")
  parser.add_argument("--condition", default="classes", choices=CONDITIONS,
                      help="what the hypernet reads: the class prompts, or --condition-sets sets of training "
                           "captions with their norm params averaged")
  parser.add_argument("--condition-sets", type=int, default=64, help="sets for --condition train_sets_mean")
  parser.add_argument("--recalibrate-bn", type=int, default=0,
                      help="re-estimate the BatchNorm running stats under the folded norm params over N held-out "
                           "demo training images first (0: the trained stats)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from hyperclip_jax import model_dir
  from hyperclip_jax import workdir as workdir_lib
  from hyperclip_jax.evaluators import classnames
  try:
    formats = parse_formats(args.format)
    if args.model_only:
      run = model_dir.open_run(args.workdir, args.step)
      meta = model_dir.write_model_dir(run, args.out)
      print(f"wrote the model of step {meta['source']['step']} of {args.workdir} to {args.out}")
      return 0
    if args.classes is None:
      raise ExportError("--classes is required (or pass --model-only to write the whole model)")
    names, templates = classnames.resolve(args.classes, args.templates)
    run = model_dir.open_run(args.workdir, args.step)  # a training workdir or a model directory
    here = jax.export.default_export_platform()
    platforms = args.platforms.split(",") if args.platforms else list(dict.fromkeys([here, "cpu"]))
    manifest = export_classifier(run, names, templates, args.out, platforms=platforms, condition=args.condition,
                                 condition_sets=args.condition_sets, formats=formats,
                                 recalibrate_bn=args.recalibrate_bn, tflite_python=args.tflite_python,
                                 tflite_int8=args.tflite_int8, timm_python=args.timm_python)
  except (ExportError, model_dir.ModelDirError, classnames.ClassListError, workdir_lib.RunError) as e:
    print(f"hyperclip-export: error: {e}", file=sys.stderr)
    return 2
  print(f"exported {manifest['num_classes']} classes x {manifest['num_templates']} templates from step "
        f"{manifest['source']['step']} of {args.workdir} to {args.out} (input {manifest['input']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
