"""Our full train step vs the same step in open_clip-style PyTorch, interleaved round by round in one run.

  .venv/bin/python bench/vs_open_clip.py [--peer-python .venv-peer/bin/python] [--encoders efficientnet_b0,tinynet_a]
      [--sizes 64,224] [--batch 32] [--rounds 5] [--steps 2] [--variants siglip,hyperclip] [--text demo|paper]
      [--sweep 8,16,32,64] [--sweep-size 64] [--plot docs/benchmarks.png] [--quick]
  .venv/bin/python bench/vs_open_clip.py --plot-from RESULTS.jsonl --plot docs/benchmarks.png

`make bench-peer` creates the peer venv (torch, timm, open_clip_torch) and runs the defaults. The step is the
whole training step on both sides: text tower + image tower (+ hypernetwork for hyperclip) + sigmoid loss +
global-norm clipping + AdamW, on the same in-memory batch (bench/peer_client.py's recipe), same encoder (timm
architecture at full width), same text-tower sizes, batch and image size; PyTorch runs channels_last. Each round
times `--steps` steps of every side in turn (order reversed every other round, so a shared machine's drift
falls on both); the figure is the median over rounds. MFU = useful FLOPs per step x steps/s / the 2048 x 2048
float32 matmul rate each framework reaches in the same run; useful FLOPs = 3 x the forward pass's FLOPs (XLA's
cost analysis of our forward + loss, the same architecture as the peer's), the usual forward + 2x backward
count. XLA's own count of our compiled step is printed beside it (it includes what the lowering adds, e.g. a
depthwise weight gradient done as a dense convolution). Prints one JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import figures  # bench/ is the script's directory, so on sys.path
import jax
import jax.numpy as jnp
import peer_client

from hyperclip_jax import config as config_lib
from hyperclip_jax import losses, optim, sharding, train, validation
from hyperclip_jax import state as state_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.py")
# Text towers (PAPER.md: CLIP-style causal, width 768, 8 heads, MLP 2560; depth 12 is our choice) and the
# hypernetwork that goes with each.
TEXT_SIZES = {
    "demo": dict(text=dict(width=128, depth=2, heads=4, mlp_dim=256), max_len=32,
                 hyper=dict(width=128, depth=2, heads=4, bottleneck=64)),
    "paper": dict(text=dict(width=768, depth=12, heads=8, mlp_dim=2560), max_len=77,
                  hyper=dict(width=256, depth=2, heads=4, bottleneck=64)),
}
SEED = 0


def make_config(encoder: str, image_size: int, batch: int, variant: str, text: str = "demo",
                dtype: str = "float32", conv_impl: str | None = None):
  """The demo config at full encoder width/depth with the given sizes (set_size = min(16, batch))."""
  config = config_lib.load_config(DEMO_CONFIG)
  sizes = TEXT_SIZES[text]
  with config.unlocked():
    config.model.image.name = encoder
    config.model.image.width_mult = 1.0
    config.model.image.depth_mult = 1.0
    config.model.variant = variant
    config.model.dtype = dtype
    config.loss.name = "sigmoid"  # the peer's loss (and the paper's), whatever configs/demo.py trains with
    config.model.text.update(sizes["text"])
    config.model.hyper.update(sizes["hyper"])
    config.model.hyper.set_size = min(16, batch)
    config.data.image_size = image_size
    config.data.max_len = sizes["max_len"]
    config.batch_size = batch
    if conv_impl is not None and config.model.get("conv_impl") is not None:
      config.model.conv_impl = conv_impl
  validation.validate(config, jax.device_count())
  return config


def peer_spec(config) -> dict[str, Any]:
  """What the peer needs to build the same step (sizes of both towers, batch, optimizer)."""
  tok = tokenizers.get_tokenizer(config.data.tokenizer)
  t = config.model.text
  return {"encoder": config.model.image.name, "image_size": config.data.image_size, "batch": config.batch_size,
          "embed_dim": config.model.embed_dim, "dtype": config.model.dtype, "seed": SEED,
          "lr": config.optim.lr, "weight_decay": config.optim.weight_decay, "clip_norm": config.optim.clip_norm,
          "text": {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "max_len": config.data.max_len,
                   "width": t.width, "depth": t.depth, "heads": t.heads, "mlp_dim": t.mlp_dim,
                   "causal": t.causal}}


def count_params(params: Any) -> dict[str, int]:
  """Parameter counts of the parts the peer also has (image tower, text tower; total adds t, b, hypernet)."""
  n = lambda tree: int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))  # arrays or ShapeDtypeStructs
  return {"img": n(params["img"]), "txt": n(params["txt"]), "total": n(params)}


def _flops(stage) -> float:
  """FLOPs of a jax.stages.Lowered or Compiled (XLA's cost analysis); NaN where the backend gives none (jax
  0.11's GPU backend returns None for a Lowered module)."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


class OurStep:
  """Our jitted, donated train step on a fixed in-memory batch; `run(n)` returns seconds for n steps."""

  def __init__(self, config):
    self.config = config
    mesh = sharding.make_mesh(config.mesh)
    self.model = two_towers.build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps,
                                        jax.eval_shape(self.model.init, rng)["params"])
    self.state = state_lib.init_state(self.model, tx, rng, mesh)
    repl = sharding.replicated(mesh)
    step = train.make_train_step(self.model, tx, config.loss.name, schedule)
    spec = peer_spec(config)
    batch = {"image": peer_client.images(SEED, config.batch_size, config.data.image_size),
             "text": peer_client.tokens(SEED, config.batch_size, spec["text"]["max_len"],
                                        spec["text"]["vocab_size"], spec["text"]["pad_id"])}
    self.batch = sharding.put_batch(batch, mesh)
    self.rng = rng
    jitted = jax.jit(step, donate_argnums=(0,), out_shardings=(repl, repl))
    t0 = time.perf_counter()
    compiled = jitted.lower(self.state, self.batch, rng).compile()
    self.compile_s = time.perf_counter() - t0
    self.xla_step_flops = _flops(compiled)
    self.step = compiled
    self.params = count_params(self.state["params"])
    self.forward_flops = self._forward_flops()
    self.run(1)  # warm-up

  def _forward_flops(self) -> float:
    model = self.model

    def fwd(params, batch_stats, batch, rng):
      zimg, ztxt, _ = model(params, batch_stats, batch["image"], batch["text"], train=True, rng=rng)
      return losses.sigmoid_loss(zimg, ztxt, params["t"], params["b"])
    # The lowered (unoptimised) module's count: no second compile, and no lowering artefacts.
    return _flops(jax.jit(fwd).lower(self.state["params"], self.state["batch_stats"], self.batch, self.rng))

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    m = None
    for _ in range(n):
      self.state, m = self.step(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, m))
    return time.perf_counter() - t0


def jax_matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """FLOP/s of a jitted n x n float32 matmul (median of reps), the practical peak of this device. Precision
  'highest': true float32 as torch's default matmul (a GPU's default precision may use TF32)."""
  a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  for _ in range(2):
    f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / statistics.median(times)


def compare(peer: peer_client.Peer, encoder: str, size: int, batch: int, args, peaks: dict[str, float],
            figure: str = "train_images_per_sec") -> list[dict[str, Any]]:
  """One encoder/size/batch: ours (each variant) and the peer, interleaved; emits the figures."""
  rows = []
  base = dict(encoder=encoder, image_size=size, batch=batch, text=args.text, dtype=args.dtype)
  ours = {v: OurStep(make_config(encoder, size, batch, v, args.text, args.dtype, args.conv_impl))
          for v in args.variants}
  spec = peer_spec(next(iter(ours.values())).config)
  built = peer.call("build_step", impl=args.peer_impl, **spec)
  siglip_like = ours.get("siglip") or next(iter(ours.values()))
  for part in ("img", "txt"):
    if built["params"][part] != siglip_like.params[part]:
      print(f"vs_open_clip.py: warning: {part} tower has {siglip_like.params[part]} params here but "
            f"{built['params'][part]} in the peer ({encoder})", file=sys.stderr)
  sides: dict[str, Callable[[], float]] = {f"ours_{v}": (lambda s=s: s.run(args.steps)) for v, s in ours.items()}
  sides["peer"] = lambda: peer.call("time_step", steps=args.steps)["seconds"]
  med = figures.interleave(sides, args.rounds)
  ips = {k: args.steps * batch / s for k, s in med.items()}
  useful = {f"ours_{v}": 3.0 * s.forward_flops for v, s in ours.items()}
  useful["peer"] = 3.0 * siglip_like.forward_flops  # same architecture as our siglip step
  for k, v in ips.items():
    side = "peer" if k == "peer" else "ours"
    variant = "siglip" if k == "peer" else k[len("ours_"):]
    extra = dict(side=side, variant=variant, rounds=args.rounds, steps_per_round=args.steps, **base)
    if side == "peer":
      extra.update(peer_impl=built["impl"], peer_device=peer.info["device_name"], torch=peer.info["torch"],
                   peer_threads=peer.info["threads"], omp_wait_policy=peer.info["omp_wait_policy"])
    rows.append(figures.emit(figure, round(v, 3), "images/s", **extra))
    if figure == "train_images_per_sec":
      peak = peaks["peer" if side == "peer" else "ours"]
      mfu = useful[k] * (v / batch) / peak
      known = math.isfinite(mfu)  # JSON has no NaN: an unknown count is null, and says why
      figures.emit("train_mfu", round(mfu, 5) if known else None, "fraction of matmul peak",
                   useful_flops_per_step=useful[k] if known else None,
                   flops_source="3 x XLA cost analysis of our forward + loss" if known
                   else "none: this backend gives no cost analysis of the lowered forward", **extra)
  if figure == "train_images_per_sec":
    for v, s in ours.items():
      figures.emit("ours_over_peer_throughput", round(ips[f"ours_{v}"] / ips["peer"], 4), "ratio", variant=v,
                   goal=">= 0.7 (CPU)", **base)
      figures.emit("xla_step_flops", s.xla_step_flops if math.isfinite(s.xla_step_flops) else None, "FLOP",
                   variant=v, **base)
      figures.emit("compile_seconds", round(s.compile_s, 2), "s", variant=v, **base)
    figures.emit("params", siglip_like.params["total"], "count", side="ours", variant=next(iter(ours)), **base)
    figures.emit("params", built["params"]["total"], "count", side="peer", variant="siglip", **base)
  return rows


def plot(rows: list[dict[str, Any]], path: str) -> None:
  """images/s vs batch, ours vs peer, from the sweep rows."""
  import matplotlib  # only here: the benchmark itself needs no matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  sweep = [r for r in rows if r.get("name") == "sweep_images_per_sec"]
  if not sweep:
    raise SystemExit("vs_open_clip.py: error: no sweep_images_per_sec rows to plot; run with --sweep")
  fig, ax = plt.subplots(figsize=(6, 4))
  for key in sorted({(r["side"], r["variant"]) for r in sweep}):
    pts = sorted((r["batch"], r["value"]) for r in sweep if (r["side"], r["variant"]) == key)
    label = "PyTorch peer (channels_last)" if key[0] == "peer" else f"ours ({key[1]})"
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
  r0 = sweep[0]
  ax.set_xscale("log", base=2)
  batches = sorted({r["batch"] for r in sweep})
  ax.set_xticks(batches, [str(b) for b in batches])
  ax.set_xlabel("batch")
  ax.set_ylabel("train step images/s")
  ax.set_title(f"{r0['encoder']} {r0['image_size']} px, {r0['backend']} ({r0['device']})", fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"vs_open_clip.py: wrote {path}", file=sys.stderr)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--peer-python", default=peer_client.DEFAULT_PYTHON)
  p.add_argument("--peer-device", default=None, help="cpu | cuda (default: cuda when JAX runs on a GPU)")
  p.add_argument("--peer-impl", default="auto", choices=("auto", "open_clip", "plain"))
  p.add_argument("--peer-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
  p.add_argument("--encoders", default="efficientnet_b0,tinynet_a")
  p.add_argument("--sizes", default="64,224")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=2, help="steps per side per round")
  p.add_argument("--variants", default="siglip,hyperclip")
  p.add_argument("--text", default="demo", choices=sorted(TEXT_SIZES))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--conv-impl", default=None, help="config.model.conv_impl, where the config has it")
  p.add_argument("--sweep", default=None, help="batches for images/s vs batch (default 8,16,32,64; '' = none)")
  p.add_argument("--sweep-size", type=int, default=64)
  p.add_argument("--sweep-encoder", default="efficientnet_b0")
  p.add_argument("--plot", default=None, help="write the sweep's plot here (PNG)")
  p.add_argument("--plot-from", default=None, help="plot the JSON lines of an earlier run; runs nothing")
  p.add_argument("--skip-main", action="store_true", help="only the sweep")
  p.add_argument("--quick", action="store_true", help="smoke check: tinynet_e, 32 px, batch 8, 3 rounds of 1")
  args = p.parse_args(argv)
  if args.quick:
    args.encoders, args.sizes, args.batch, args.rounds, args.steps = "tinynet_e", "32", 8, 3, 1
    args.sweep_size, args.sweep_encoder = 32, "tinynet_e"
  if args.sweep is None:
    args.sweep = "4,8" if args.quick else "8,16,32,64"
  args.encoders = [e for e in args.encoders.split(",") if e]
  args.sizes = [int(s) for s in args.sizes.split(",") if s]
  args.variants = [v for v in args.variants.split(",") if v]
  args.sweep = [int(b) for b in args.sweep.split(",") if b]
  bad = [v for v in args.variants if v not in ("siglip", "hyperclip")]
  if bad or not args.variants:
    p.error(f"--variants {','.join(bad) or '(empty)'}: each must be siglip or hyperclip")
  if args.rounds < 1 or args.steps < 1:
    p.error("--rounds and --steps must be >= 1")
  return args


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  if args.plot_from:
    with open(args.plot_from, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.startswith("{")]
    plot(rows, args.plot or "docs/benchmarks.png")
    return
  device = args.peer_device or ("cuda" if jax.default_backend() == "gpu" else "cpu")
  try:
    peer = peer_client.Peer(args.peer_python, device, threads=args.peer_threads)
  except peer_client.PeerError as e:
    sys.exit(f"vs_open_clip.py: error: {e}")
  rows: list[dict[str, Any]] = []
  with peer:
    peaks = figures.interleave(  # interleaved too: median of three alternations
        {"ours": jax_matmul_peak, "peer": lambda: peer.call("matmul", n=2048)["flops_per_s"]}, 3)
    figures.emit("matmul_2048_f32_peak", round(peaks["ours"] / 1e9, 2), "GFLOP/s", side="ours",
                 jax=jax.__version__)
    figures.emit("matmul_2048_f32_peak", round(peaks["peer"] / 1e9, 2), "GFLOP/s", side="peer",
                 peer_device=peer.info["device_name"], torch=peer.info["torch"])
    if not args.skip_main:
      for encoder in args.encoders:
        for size in args.sizes:
          compare(peer, encoder, size, args.batch, args, peaks)
    if args.sweep:
      sweep_args = argparse.Namespace(**{**vars(args), "variants": ["siglip"]})
      for batch in args.sweep:
        rows += compare(peer, args.sweep_encoder, args.sweep_size, batch, sweep_args, peaks,
                        figure="sweep_images_per_sec")
  if args.plot and rows:
    plot(rows, args.plot)


if __name__ == "__main__":
  main(sys.argv[1:])
