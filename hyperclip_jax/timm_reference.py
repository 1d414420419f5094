"""Logits of an exported timm directory through timm.create_model, for hyperclip-export's --format timm check.

Runs in a Python with torch and timm (the Makefile's .venv-golden), never in the package's own venv: it imports
nothing from hyperclip_jax. hyperclip-export calls it as a subprocess:
  PYTHON hyperclip_jax/timm_reference.py DIR/timm images.npy logits.npy
images.npy: uint8 [N, S, S, 3] RGB; logits.npy: float32 [N, C]. Prints one JSON line with the versions used.
It is also the deployment recipe of docs/deploy.md, run as written there.
"""
import json
import os
import sys

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F


def load(timm_dir: str) -> tuple[torch.nn.Module, dict, dict]:
  """(model in eval mode, head tensors, config) from DIR/timm."""
  with open(os.path.join(timm_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  d = cfg["num_classes"]  # the embedding width: timm's classifier is our image projection
  model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=d, **cfg["model_args"],
                            pretrained_cfg_overlay=dict(cfg["pretrained_cfg"],
                                                        file=os.path.join(timm_dir, "model.safetensors")))
  head = safetensors.torch.load_file(os.path.join(timm_dir, cfg["hyperclip_head"]["file"]))
  return model.eval(), head, cfg


def logits(model: torch.nn.Module, head: dict, cfg: dict, images: np.ndarray) -> np.ndarray:
  """uint8 [N, S, S, 3] -> float32 logits [N, C]: timm's normalisation, the model, then the head formula."""
  pre = cfg["pretrained_cfg"]
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
  with torch.no_grad():
    z = F.normalize(model(x), dim=-1)
    return (z @ head["classes"].T * head["scale"] + head["bias"]).numpy()


def main(argv: list[str]) -> None:
  timm_dir, src, dst = argv
  model, head, cfg = load(timm_dir)
  images = np.load(src)
  out = logits(model, head, cfg, images)
  one = logits(model, head, cfg, images[1:2])  # batch 1 gives the same row
  if not np.allclose(one, out[1:2], rtol=0, atol=1e-4 * float(np.abs(out).max()) + 1e-4):
    sys.exit(f"timm_reference: batch 1 and batch {len(images)} disagree ({np.abs(one - out[1:2]).max():.3g})")
  np.save(dst, out.astype(np.float32))
  print(json.dumps({"timm": timm.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
  main(sys.argv[1:])
