"""The PyTorch peer: an open_clip-style SigLIP train step and a timm classifier, served over stdin/stdout.

  .venv-peer/bin/python bench/peer_torch.py     (started by bench/vs_open_clip.py and bench/export.py)

Runs in its own venv (torch never enters .venv). Reads one JSON request per line on stdin and answers one
JSON line on stdout; nothing else goes to stdout. Requests ({"op": ...}):
  init       {device: cpu|cuda, threads?}                  -> {torch, timm, open_clip, device, threads}
  matmul     {n, reps}                                     -> {flops_per_s} of an n x n float32 matmul
  build_step {encoder, image_size, batch, embed_dim, text: {...}, dtype, seed, lr, ...}
                                                           -> {params: {img, txt, total}, impl}
  time_step  {steps}                                       -> {seconds} for `steps` train steps
  build_clf  {encoder, image_size, classes, embed_dim, batch, seed} -> {params}
  time_clf   {reps}                                        -> {times: [seconds per call]}
  quit
Inputs are regenerated from the request's seed with the numpy recipe of bench/peer_client.py (`images`,
`tokens`), imported from there so both sides see the same batch.

The step: timm image encoder (channels_last) + bias-free linear head, a pre-LN transformer text tower of the
same sizes (causal + padding mask, 'eot' pooling, bias-free projection), the SigLIP sigmoid loss with a
learnable t' and b, global-norm clipping and torch.optim.AdamW (weight decay on matrices only) — the parts of
our step. With open_clip_torch importable and `impl` 'auto' or 'open_clip', the text tower is open_clip's
TextTransformer and the loss open_clip's SigLipLoss; 'plain' forces the torch + timm form.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F

# bench/ is on sys.path (the script's directory): the input recipe shared with the JAX side.
from peer_client import images as _images
from peer_client import tokens as _tokens
from peer_client import uint8_images as _uint8_images
from torch import nn

try:
  import open_clip  # optional: only where it installed beside the pinned torch
except Exception:  # noqa: BLE001 - any import failure means "not available"
  open_clip = None


class TextTower(nn.Module):
  """Pre-LN transformer over token ids, the shape of hyperclip_jax's TextTransformer (same parameter count)."""

  def __init__(self, vocab_size: int, width: int, depth: int, heads: int, mlp_dim: int, max_len: int,
               out_dim: int, pad_id: int, causal: bool):
    super().__init__()
    self.pad_id, self.causal = pad_id, causal
    self.token_embed = nn.Embedding(vocab_size, width)
    self.pos_embed = nn.Parameter(torch.randn(max_len, width) * 0.01)
    layer = nn.TransformerEncoderLayer(width, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
    self.ln_final = nn.LayerNorm(width)
    self.proj = nn.Linear(width, out_dim, bias=False)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    b, l = tokens.shape
    x = self.token_embed(tokens) + self.pos_embed[:l]
    pad = tokens == self.pad_id  # [B, L], True = masked key
    causal = torch.triu(torch.ones(l, l, dtype=torch.bool, device=tokens.device), 1) if self.causal else None
    x = self.ln_final(self.blocks(x, mask=causal, src_key_padding_mask=pad))
    idx = torch.where(pad, 0, torch.arange(l, device=tokens.device)[None, :]).amax(1)  # last non-pad position
    return self.proj(x[torch.arange(b, device=tokens.device), idx])


class TwoTowers(nn.Module):
  """Image tower (timm encoder + head) and text tower, with the SigLIP t' and b."""

  def __init__(self, spec: dict[str, Any], impl: str):
    super().__init__()
    t = spec["text"]
    self.encoder = timm.create_model(spec["encoder"], pretrained=False, num_classes=0)
    self.head = nn.Linear(_feature_dim(self.encoder), spec["embed_dim"], bias=False)
    if impl == "open_clip":
      self.text = open_clip.transformer.TextTransformer(
          context_length=t["max_len"], vocab_size=t["vocab_size"], width=t["width"], heads=t["heads"],
          layers=t["depth"], mlp_ratio=t["mlp_dim"] / t["width"], output_dim=spec["embed_dim"],
          no_causal_mask=not t["causal"], use_pad_mask=True, pad_id=t["pad_id"], pool_type="argmax",
          proj_bias=False, act_layer=nn.GELU)
    else:
      self.text = TextTower(t["vocab_size"], t["width"], t["depth"], t["heads"], t["mlp_dim"], t["max_len"],
                            spec["embed_dim"], t["pad_id"], t["causal"])
    self.t = nn.Parameter(torch.tensor(math.log(10.0)))
    self.b = nn.Parameter(torch.tensor(-10.0))

  def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    zimg = F.normalize(self.head(self.encoder(images)), dim=-1)
    ztxt = F.normalize(self.text(tokens), dim=-1)
    return zimg, ztxt


def sigmoid_loss(zimg: torch.Tensor, ztxt: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """-sum log sigmoid(labels * logits) / N over all N x N pairs (hyperclip_jax.losses.sigmoid_loss)."""
  logits = zimg @ ztxt.T * t.exp() + b
  labels = 2.0 * torch.eye(zimg.shape[0], device=zimg.device) - 1.0
  return -F.logsigmoid(labels * logits).sum() / zimg.shape[0]


def _feature_dim(encoder: nn.Module) -> int:
  """Width of a timm encoder's pooled output with num_classes=0 (MobileNetV3: after conv_head, not num_features)."""
  return int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)


def _count(module: nn.Module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


class Peer:
  """State of the server: device, the train step's model/optimizer/batch, the classifier."""

  def __init__(self):
    self.device = torch.device("cpu")
    self.step_fn = None
    self.clf_fn = None

  def _sync(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize()

  def init(self, req: dict[str, Any]) -> dict[str, Any]:
    self.device = torch.device(req.get("device", "cpu"))
    if req.get("threads"):
      torch.set_num_threads(int(req["threads"]))
    torch.backends.cudnn.benchmark = True
    return {"torch": torch.__version__, "timm": timm.__version__,
            "open_clip": getattr(open_clip, "__version__", None), "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"),
            "threads": torch.get_num_threads()}

  def matmul(self, req: dict[str, Any]) -> dict[str, Any]:
    n, reps = int(req.get("n", 2048)), int(req.get("reps", 10))
    a = torch.randn(n, n, device=self.device)
    b = torch.randn(n, n, device=self.device)
    for _ in range(2):
      a @ b
    self._sync()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      a @ b
      self._sync()
      times.append(time.perf_counter() - t0)
    return {"flops_per_s": 2.0 * n ** 3 / float(np.median(times))}

  def build_step(self, req: dict[str, Any]) -> dict[str, Any]:
    impl = req.get("impl", "auto")
    if impl == "auto":
      impl = "open_clip" if open_clip is not None else "plain"
    if impl == "open_clip" and open_clip is None:
      raise ValueError("impl 'open_clip' asked but open_clip_torch does not import in this venv; use 'plain'")
    torch.manual_seed(req.get("seed", 0))
    model = TwoTowers(req, impl).to(self.device).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": req.get("weight_decay", 1e-4)},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=req.get("lr", 2e-3), betas=(0.9, 0.98), eps=1e-8)
    t = req["text"]
    images = torch.from_numpy(_images(req["seed"], req["batch"], req["image_size"])).permute(0, 3, 1, 2)
    images = images.contiguous(memory_format=torch.channels_last).to(self.device)
    tokens = torch.from_numpy(_tokens(req["seed"], req["batch"], t["max_len"], t["vocab_size"], t["pad_id"])).long()
    tokens = tokens.to(self.device)
    amp = req.get("dtype", "float32") == "bfloat16"
    clip = float(req.get("clip_norm", 1.0))
    model.train()
    if impl == "open_clip":
      siglip = open_clip.loss.SigLipLoss()
      loss_fn = lambda zimg, ztxt, t, b: siglip(zimg, ztxt, t.exp(), b)
    else:
      loss_fn = sigmoid_loss

    def step() -> None:
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
        zimg, ztxt = model(images, tokens)
      loss = loss_fn(zimg.float(), ztxt.float(), model.t, model.b)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
      opt.step()

    self.step_fn = step
    for _ in range(int(req.get("warmup", 2))):
      step()
    self._sync()
    return {"impl": impl, "params": {"img": _count(model.encoder) + _count(model.head), "txt": _count(model.text),
                                     "total": _count(model)}}

  def time_step(self, req: dict[str, Any]) -> dict[str, Any]:
    self._sync()
    t0 = time.perf_counter()
    for _ in range(int(req["steps"])):
      self.step_fn()
    self._sync()
    return {"seconds": time.perf_counter() - t0}

  def build_clf(self, req: dict[str, Any]) -> dict[str, Any]:
    """timm encoder + head + logits against fixed class embeddings, eval mode, channels_last, uint8 in."""
    torch.manual_seed(req.get("seed", 0))
    enc = timm.create_model(req["encoder"], pretrained=False, num_classes=0).eval()
    head = nn.Linear(_feature_dim(enc), req["embed_dim"], bias=False).eval()
    enc = enc.to(self.device).to(memory_format=torch.channels_last)
    head = head.to(self.device)
    zcls = F.normalize(torch.randn(req["classes"], req["embed_dim"], device=self.device), dim=-1)
    s = req["image_size"]
    images = _uint8_images(req.get("seed", 0), req["batch"], s)

    @torch.inference_mode()
    def forward() -> np.ndarray:  # host uint8 NHWC in, host logits out (as the exported classifier)
      x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
      x = x.contiguous(memory_format=torch.channels_last)
      z = F.normalize(head(enc(x)), dim=-1)
      return (10.0 * z @ zcls.T - 10.0).cpu().numpy()

    self.clf_fn = forward
    for _ in range(3):
      forward()
    return {"params": _count(enc) + _count(head)}

  def build_export(self, req: dict[str, Any]) -> dict[str, Any]:
    """An exported DIR/timm (hyperclip-export --format timm) as docs/deploy.md runs it: timm.create_model + the
    written files, eager, eval mode, the head formula on top (hyperclip_jax/timm_reference.py, loaded by path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("timm_reference", req["reference"])
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    model, head, cfg = ref.load(req["dir"])
    model = model.to(self.device)
    head = {k: v.to(self.device) for k, v in head.items()}
    pre = cfg["pretrained_cfg"]
    mean = torch.tensor(pre["mean"], device=self.device).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=self.device).view(1, 3, 1, 1)
    images = _uint8_images(req.get("seed", 0), req["batch"], pre["input_size"][-1])

    @torch.inference_mode()
    def forward() -> np.ndarray:  # host uint8 NHWC in, host logits out (as the exported classifier)
      x = (torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
      z = F.normalize(model(x), dim=-1)
      return (z @ head["classes"].T * head["scale"] + head["bias"]).cpu().numpy()

    self.export_fn = forward
    for _ in range(3):
      forward()
    return {"params": _count(model)}

  def time_clf(self, req: dict[str, Any]) -> dict[str, Any]:
    fn = self.export_fn if req.get("which") == "export" else self.clf_fn
    times = []
    for _ in range(int(req["reps"])):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return {"times": times}


def main() -> None:
  peer = Peer()
  ops = {"init": peer.init, "matmul": peer.matmul, "build_step": peer.build_step, "time_step": peer.time_step,
         "build_clf": peer.build_clf, "time_clf": peer.time_clf, "build_export": peer.build_export}
  out = sys.stdout
  sys.stdout = sys.stderr  # library prints must not corrupt the protocol
  for line in sys.stdin:
    req = json.loads(line)
    if req.get("op") == "quit":
      break
    try:
      if req.get("op") not in ops:
        raise ValueError(f"op {req.get('op')!r} is unknown; known: {', '.join(ops)}, quit")
      resp = {"ok": True, **ops[req["op"]](req)}
    except Exception as e:  # noqa: BLE001 - report to the client, keep serving
      resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    out.write(json.dumps(resp) + "\n")
    out.flush()


if __name__ == "__main__":
  main()
