"""Image-tower train step (forward + backward + AdamW): our JAX encoders under each conv lowering vs timm in
PyTorch channels-last, interleaved step by step, median of --reps.

Each side runs in its own worker process (JAX workers with their own XLA_FLAGS; the torch worker in the
torch venv, which must have torch and timm), so their thread pools never overlap: the parent asks one worker
for one timed step, then the next, round-robin. One JSON line per figure (name, value, unit, backend, device,
command); `ratio` lines give each JAX form's images/s over torch channels-last's.

  python bench/conv_forms.py --models efficientnet_b0,tinynet_a --sizes 64,224 --batch 32 --reps 5 \\
      --forms native,cpu_fast,cpu_fast+ynn --torch-python .venv-golden/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

# A JAX form: conv_impl [+ynn], ynn = the XLA CPU flag that keeps convolutions out of YNNPACK's one-op fusions.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _jax_worker(model: str, size: int, batch: int, impl: str) -> None:
  """Builds the step, compiles it, answers each 'step' line on stdin with one step's seconds."""
  import jax
  import jax.numpy as jnp
  import optax
  from hyperclip_jax.models import build_image_encoder

  enc = build_image_encoder(model, conv_impl=impl)
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3), jnp.float32)
  variables = jax.jit(enc.init)(jax.random.PRNGKey(1), images[:1])
  tx = optax.adamw(1e-3, weight_decay=0.05)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  def step(state, images):
    params, stats, opt = state

    def loss(params):
      feats, upd = enc.apply({"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
      return jnp.mean(jnp.square(feats)), upd["batch_stats"]  # feats [B, C]

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), value

  step = jax.jit(step, donate_argnums=0)
  t0 = time.perf_counter()
  state, value = step(state, images)
  value.block_until_ready()
  _reply({"ready": True, "compile_s": time.perf_counter() - t0, "device": _cpu_name(),
          "backend": jax.default_backend()})
  for line in sys.stdin:
    t0 = time.perf_counter()
    state, value = step(state, images)
    value.block_until_ready()
    _reply({"seconds": time.perf_counter() - t0})


def _torch_worker(model: str, size: int, batch: int) -> None:
  """timm's model, channels-last, train mode, AdamW: same protocol as the JAX worker."""
  import timm
  import torch
  torch.manual_seed(0)
  net = timm.create_model(model, pretrained=False, num_classes=0).train().to(memory_format=torch.channels_last)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
  images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    value = net(images).square().mean()
    value.backward()
    opt.step()
    return float(value.detach())

  t0 = time.perf_counter()
  step()
  _reply({"ready": True, "compile_s": time.perf_counter() - t0, "device": _cpu_name(),
          "backend": f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads"})
  for line in sys.stdin:
    t0 = time.perf_counter()
    step()
    _reply({"seconds": time.perf_counter() - t0})


def _reply(obj: dict[str, Any]) -> None:
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
  except OSError:
    pass
  return platform.processor() or "cpu"


class _Worker:
  """One persistent worker process; `step()` returns the seconds of one timed step."""

  def __init__(self, label: str, argv: list[str], env: dict[str, str]):
    self.label = label
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()

  def _read(self) -> dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.label} exited with code {self.proc.wait()} before answering")
    return json.loads(line)

  def step(self) -> float:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    return self._read()["seconds"]

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="efficientnet_b0,tinynet_a")
  p.add_argument("--sizes", default="64,224")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--forms", default="cpu_fast,cpu_fast+ynn",
                 help="comma-separated JAX forms: native | cpu_fast | auto, each optionally +ynn (the XLA flag)")
  p.add_argument("--torch-python", default=".venv-golden/bin/python", help="python of a venv with torch + timm")
  p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--impl", default="auto", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker == "jax":
    _jax_worker(args.models, int(args.sizes), args.batch, args.impl)
    return 0
  if args.worker == "torch":
    _torch_worker(args.models, int(args.sizes), args.batch)
    return 0
  if args.reps < 5:
    p.error(f"--reps={args.reps}: the median needs at least 5 steps")
  command = "python bench/conv_forms.py " + " ".join(sys.argv[1:] if argv is None else argv)
  here = os.path.abspath(__file__)
  for model in args.models.split(","):
    for size in [int(s) for s in args.sizes.split(",")]:
      common = ["--models", model, "--sizes", str(size), "--batch", str(args.batch)]
      workers = [_Worker("torch_channels_last", [args.torch_python, here, "--worker", "torch", *common],
                         dict(os.environ))]
      for form in args.forms.split(","):
        impl, _, extra = form.partition("+")
        env = dict(os.environ)
        if extra == "ynn":
          env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + YNN_FLAG).strip()
        elif extra:
          raise SystemExit(f"--forms: {form!r} has an unknown suffix {extra!r}; known: +ynn")
        workers.append(_Worker(f"jax_{form}", [sys.executable, here, "--worker", "jax", "--impl", impl, *common],
                               env))
      times: dict[str, list[float]] = {w.label: [] for w in workers}
      for _ in range(args.reps):
        for w in workers:
          times[w.label].append(w.step())
      for w in workers:
        w.close()
      ips = {label: args.batch / statistics.median(t) for label, t in times.items()}
      base = ips["torch_channels_last"]
      for w in workers:
        name = f"train_step/{model}/{size}px/b{args.batch}/{w.label}"
        print(json.dumps({"name": name, "value": round(ips[w.label], 3), "unit": "img/s",
                          "backend": w.info["backend"], "device": w.info["device"], "command": command,
                          "steps_s": [round(t, 4) for t in times[w.label]],
                          "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)
        if w.label != "torch_channels_last":
          print(json.dumps({"name": name + "/vs_torch_channels_last", "value": round(ips[w.label] / base, 3),
                            "unit": "ratio", "backend": w.info["backend"], "device": w.info["device"],
                            "command": command}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
