"""The model card (README.md) hyperclip-export writes next to an exported classifier.

It is built from the manifest alone plus the source run's logged eval metrics (model_dir.eval_metrics), so it
says only what the export knows: where the weights came from, what goes in and out, how each format was checked.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from hyperclip_jax.data.input_pipeline import EVAL_PP

CARD = "README.md"
PATENT = ("The HyperCLIP method is the subject of a US patent application (US20260094424A1). The hyperclip_jax "
          "code is Apache-2.0 licensed; users should judge for themselves whether their use of the method needs "
          "a licence.")
VARIANTS = {"hyperclip": "HyperCLIP: a hypernetwork generated the image encoder's norm scales/biases from the "
                         "class prompts (folded into the weights here)",
            "siglip": "SigLIP baseline: a plain two-tower model, no hypernetwork"}


def _list(names: Sequence[str], limit: int = 20) -> str:
  shown = ", ".join(f"`{n}`" for n in names[:limit])
  return shown + (f", ... ({len(names) - limit} more: classes.json)" if len(names) > limit else "")


def render(manifest: dict[str, Any], class_names: Sequence[str], metrics: dict[str, float]) -> str:
  m, src, s = manifest["model"], manifest["source"], manifest["input_size"]
  condition = manifest["condition"]
  condition = ("the class prompts" if condition == "classes" else
               f"the mean norm params of {next(iter(condition.values()))} sets of training captions")
  lines = [
      f"# Zero-shot classifier: {len(class_names)} classes, {m['image_encoder']} ({m['variant']})", "",
      "Written by `hyperclip-export` (hyperclip_jax). Load it with `hyperclip_jax.export.load_classifier(DIR)` "
      "or `hyperclip-predict --model DIR IMAGES`; docs/deploy.md has onnxruntime and jax examples.", "",
      "## Source", "",
      f"- run: `{src['workdir']}`, step {src['step']}, config hash `{src['config_hash']}`",
      f"- variant: `{m['variant']}`: {VARIANTS.get(m['variant'], 'see the project README')}",
      f"- image encoder: `{m['image_encoder']}`, embedding dim {m['embed_dim']}, dtype {m['dtype']}",
      f"- the hypernet read {condition}" if m["variant"] != "siglip" else "- no hypernet",
      "", "## Input and output", "",
      f"- input: {manifest['input']}, any N",
      f"- preprocessing (yours, before the call): decode to RGB, resize to {s}x{s} (bilinear); the classifier "
      f"itself maps uint8 to [-1, 1] (`{manifest['preprocessing']}`)",
      f"- output: logits float32 [N, {len(class_names)}] = {manifest['logits']}, temperature "
      f"{manifest['temperature']:.6g}, bias {manifest['bias']:.6g}; scores: {manifest['score']} of the logits",
      "", "## Classes and templates", "",
      f"- {len(class_names)} classes, in logit order (classes.json): {_list(list(class_names))}",
      f"- {manifest['num_templates']} prompt templates, class embeddings averaged over them: "
      f"{_list(manifest['templates'], 5)}",
      "", "## Zero-shot accuracy of the source run", "",
  ]
  zs = {k: v for k, v in sorted(metrics.items()) if k.startswith("zeroshot/")}
  if zs:
    lines += [f"Logged by the run's evaluators at step {src['step']} on its eval data (its own class lists, which "
              "may differ from this export's):", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in zs.items()]
  else:
    lines.append(f"None logged at step {src['step']} (score it: `hyperclip-eval --workdir RUN --step "
                 f"{src['step']}`).")
  lines += ["", "## Formats", "", "| file | format | check |", "|---|---|---|"]
  for name, f in manifest["formats"].items():
    check = f.get("check")
    if name == "stablehlo":
      what = f"the reference (jax.export of the folded model); platforms {', '.join(f['platforms'])}"
    elif check and name == "tflite":
      what = (f"LiteRT (ai-edge-litert {check['ai_edge_litert']}, converted by TensorFlow {check['tensorflow']}) "
              f"vs the jax artifact on {check['images']} images: max abs diff {check['max_abs_diff']:.3g} "
              f"(tolerance {check['tolerance']:.3g}), top-1 agreement {check['top1_agreement']:.3f}")
    elif name == "timm" and check.get("status") != "passed":
      what = f"not checked: {check['reason']}"
    elif name == "timm":
      what = (f"timm {check['timm']} (torch {check['torch']}) via timm.create_model + the head formula vs the jax "
              f"artifact on {check['images']} images: max abs diff {check['max_abs_diff']:.3g} (tolerance "
              f"{check['tolerance']:.3g}), top-1 agreement {check['top1_agreement']:.3f}")
    elif check:
      what = (f"onnxruntime {check['onnxruntime']} vs the jax artifact on {check['images']} images: max abs diff "
              f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}), top-1 agreement "
              f"{check['top1_agreement']:.3f}")
    else:
      what = "unchecked"
    lines.append(f"| {f.get('file', f.get('dir', '') + '/')} | {name} | {what} |")
    if "int8" in f:  # a quantised variant, scored on the run's eval images
      q, ev = f["int8"], f["int8"]["eval"]
      lines.append(f"| {q['file']} | {name} int8 | {q['quantisation']}, calibrated on {q['representative_images']} "
                   f"of the run's `{ev['task']}` eval images; top-1 on the other {ev['images']}: jax "
                   f"{ev['top1_jax']:.4f}, int8 {ev['top1_int8']:.4f} ({ev['top1_change']:+.4f}) |")
  lines += ["",
            "## Licence and patent", "", "Exported with hyperclip_jax, Apache-2.0. The weights come from the "
            "source run above; its training data's terms apply to them.", "", PATENT, ""]
  return "\n".join(lines)


def render_model(meta: dict[str, Any], config: Any) -> str:
  """The card of a model directory (hyperclip-export --model-only)."""
  src, s = meta["source"], int(config.data.image_size)
  zs = {k: v for k, v in sorted(meta.get("eval_metrics", {}).items()) if k.startswith("zeroshot/")}
  lines = [
      f"# HyperCLIP model: {meta['image_encoder']} ({meta['variant']}), step {src['step']}", "",
      "Written by `hyperclip-export --model-only` (hyperclip_jax): text tower, hypernetwork, image tower, log "
      "temperature `t` and bias `b` as plain Orbax params (`params/`), the resolved config (`config.json`) and "
      "the tokenizer spec (`tokenizer.json`). `hyperclip_jax.load_model(DIR)` rebuilds it; "
      "`orbax.checkpoint.StandardCheckpointer().restore(DIR/params)` reads the weights alone.", "",
      f"- run: `{src['workdir']}`, step {src['step']}, config hash `{src['config_hash']}`",
      f"- variant: `{meta['variant']}`" + ("" if meta["variant"] == "siglip" else ": a hypernetwork generates "
                                          "the image encoder's norm scales/biases from a set of text embeddings"),
      f"- image encoder: `{meta['image_encoder']}`, input {s}x{s} RGB; eval preprocessing `{EVAL_PP.format(size=s)}`",
      f"- tokenizer: `{config.data.tokenizer}`, max_len {config.data.max_len}", "",
      "## Zero-shot accuracy of the source run", "",
  ]
  if zs:
    lines += [f"Logged by the run's evaluators at step {src['step']} on its eval data:", "", "| metric | value |",
              "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in zs.items()]]
  else:
    lines.append("None logged at this step (score it: `hyperclip-eval --workdir DIR`).")
  lines += ["", "## Licence and patent", "", "Exported with hyperclip_jax, Apache-2.0. The weights come from the "
            "source run above; its training data's terms apply to them.", "", PATENT, ""]
  return "\n".join(lines)


def write(out_dir: str, manifest: dict[str, Any], class_names: Sequence[str], metrics: dict[str, float]) -> str:
  """Writes out_dir/README.md (metrics: the source run's logged evaluator metrics at its step); returns its path."""
  path = os.path.join(out_dir, CARD)
  with open(path, "w", encoding="utf-8") as f:
    f.write(render(manifest, class_names, metrics))
  return path
