"""The exported zero-shot classifier against the plain image encoder: forward time and size on disk.

  .venv/bin/python bench/export.py [--workdir RUN] [--config configs/demo.py] [--classes demo:colour]
                                   [--reps 50] [--formats stablehlo,onnx] [--peer-python .venv-peer/bin/python]
                                   [--tflite-python .venv-tflite/bin/python]
                                   [--config.a.b=v ...]

Prints one JSON line per figure. "exported" is load_classifier(DIR) (the deserialized StableHLO artifact:
folded weights, uint8 images -> logits); "plain" is the same image tower with its own norm params and no
hypernet (the SigLIP baseline's deployment: BatchNorm in eval mode, unfolded), jitted, with the same input
conversion and logits. Goal: exported / plain <= 1.05 (folding should make it at most as slow). Without
--workdir, a run of random weights is written to a temporary workdir (same shapes and checkpoint size as a
trained one of the config).

"timm" as a format (--formats ...,timm, an unscaled encoder: --config.model.image.width_mult=1.0
--config.model.image.depth_mult=1.0) is the exported DIR/timm loaded with timm.create_model in the peer
(checked at export with the peer python), eager, + the head formula: rows format_forward_ms format=timm.

"onnxruntime" (with --formats ...,onnx, the default when onnxruntime is installed) is the exported
classifier.onnx in an onnxruntime CPU session (default threads, all graph optimisations), timed in turn with the
jax sides on the same uint8 images; one row per format and batch (`classifier_forward_ms`, side=format).
"tflite" (when the TensorFlow venv exists: `make tflite`) is classifier.tflite in the LiteRT interpreter (default
threads), timed in that venv as a subprocess after the others, on the same images (`format_forward_ms`,
format=tflite); without it the row is skipped with a note.

"timm" is the same encoder architecture in timm eager PyTorch, channels_last, eval mode, inference_mode, with
a bias-free head and the logits against fixed class embeddings (bench/peer_torch.py, run in the peer venv as a
subprocess: `make bench-peer` creates it), fed the same uint8 images (host in, host logits out, as the
exported classifier). Goal: timm / exported >= 1.3 at batch 1 and 32 (224 px). The three are timed in turn,
in 5 rounds of reps/5 calls each; without a peer python the timm figures are skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import figures  # bench/ is the script's directory, so on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import peer_client

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import export, export_tflite, export_timm, optim, sharding
from hyperclip_jax import state as state_lib
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames
from hyperclip_jax.models import two_towers

DEFAULT_TFLITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv-tflite", "bin", "python")


def _du(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _time_calls(fns, x, reps: int, warmup: int = 3) -> list[list[float]]:
  """Seconds per call of each of fns, alternated call by call (a shared CPU's load drifts), after warm-up
  calls (compile excluded)."""
  for _ in range(warmup):
    jax.block_until_ready([fn(x) for fn in fns])
  times = [[] for _ in fns]
  for _ in range(reps):
    for fn, t in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x))
      t.append(time.perf_counter() - t0)
  return times


def _write_run(config, workdir: str) -> str:
  """A workdir with config.json and one checkpoint of freshly initialised weights."""
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(config.seed)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, jax.eval_shape(model.init, rng)["params"])
  state = state_lib.init_state(model, tx, rng, sharding.make_mesh(config.mesh))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  checkpointer.save(0, state, {}, config_lib.model_signature(config))
  checkpointer.close()
  return workdir


def main(argv: list[str]) -> None:
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=None, help="a trained run (default: random weights, temporary)")
  parser.add_argument("--config", default="configs/demo.py", help="config when no --workdir is given")
  parser.add_argument("--classes", default="demo:colour")
  parser.add_argument("--reps", type=int, default=50)
  parser.add_argument("--formats", default=None,
                      help="stablehlo[,onnx] (default: both when onnxruntime is installed)")
  parser.add_argument("--peer-python", default=peer_client.DEFAULT_PYTHON,
                      help="python with torch + timm for the timm figures ('none' = skip them)")
  parser.add_argument("--tflite-python", default=DEFAULT_TFLITE,
                      help="python with TensorFlow + ai-edge-litert for the tflite row ('none' = skip it)")
  parser.add_argument("--peer-device", default=None, help="cpu | cuda (default: cuda when JAX runs on a GPU)")
  args = parser.parse_args(rest)
  tmp = tempfile.mkdtemp(prefix="bench_export_")
  if args.workdir:
    workdir = args.workdir
  else:
    config = config_lib.load_config(args.config)
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    workdir = _write_run(config, os.path.join(tmp, "run"))
  run = workdir_lib.load_run(workdir)
  names, templates = classnames.resolve(args.classes)
  out = os.path.join(tmp, "classifier")
  if args.formats is None:
    try:
      import onnxruntime  # noqa: F401
      args.formats = "stablehlo,onnx"
    except ImportError:
      args.formats = "stablehlo"
  formats = export.parse_formats(args.formats)
  tflite_python = None
  if args.tflite_python != "none" and os.path.isfile(args.tflite_python):
    tflite_python = args.tflite_python
    formats.append("tflite")
  elif args.tflite_python != "none":
    print(f"export.py: note: no tflite row: {args.tflite_python} does not exist (`make tflite` creates it)",
          file=sys.stderr)
  timm_python = args.peer_python if "timm" in formats and os.path.exists(args.peer_python) else None  # else unchecked
  manifest = export.export_classifier(run, names, templates, out, platforms=(jax.export.default_export_platform(),),
                                      formats=formats, tflite_python=tflite_python,
                                      timm_python=timm_python)
  clf = export.load_classifier(out)
  session = None
  if "onnx" in formats:
    import onnxruntime as ort
    session = ort.InferenceSession(os.path.join(out, "classifier.onnx"), providers=["CPUExecutionProvider"])
  s = clf.input_size

  model = two_towers.build_model(run.config)
  params, batch_stats = jax.device_get(run.params), jax.device_get(run.batch_stats)
  zcls = two_towers.l2_normalize(jax.random.normal(jax.random.PRNGKey(0), (len(names), model.embed_dim)))

  @jax.jit
  def plain(images):  # uint8 [N, S, S, 3] -> logits [N, C], no hypernet, norms unfolded (eval mode)
    x = images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
    zimg, _ = model.encode_image(params, batch_stats, x, None, train=False)
    return jnp.exp(params["t"]) * zimg @ zcls.T + params["b"]

  common = {"encoder": run.config.model.image.name, "variant": run.config.model.variant, "input_size": s,
            "classes": len(names), "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}
  peer = None
  img = run.config.model.image
  if args.peer_python != "none" and (img.get("width_mult", 1.0), img.get("depth_mult", 1.0)) != (1.0, 1.0):
    print(f"export.py: note: no timm figures: the encoder is scaled (width_mult={img.width_mult}, depth_mult="
          f"{img.depth_mult}) and timm builds only the full-size {img.name}; set both to 1.0", file=sys.stderr)
  elif args.peer_python != "none":
    device = args.peer_device or ("cuda" if jax.default_backend() == "gpu" else "cpu")
    try:
      peer = peer_client.Peer(args.peer_python, device)
    except peer_client.PeerError as e:
      print(f"export.py: note: no timm figures: {e}", file=sys.stderr)
  rounds = 5 if args.reps >= 5 else 1
  for batch in (1, 32):
    images = peer_client.uint8_images(batch, batch, s)
    if peer is not None:
      built = peer.call("build_clf", encoder=run.config.model.image.name, image_size=s, classes=len(names),
                        embed_dim=model.embed_dim, batch=batch, seed=batch)
    if peer is not None and "timm" in formats:
      peer.call("build_export", dir=os.path.join(out, "timm"), reference=export_timm.REFERENCE, batch=batch,
                seed=batch)
    times_exp, times_plain, times_timm, times_onnx, times_tfmt = [], [], [], [], []
    fns = [clf, lambda x: np.asarray(plain(x))]  # all: numpy logits
    if session is not None:
      fns.append(lambda x: session.run(["logits"], {"images": x})[0])
    for r in range(rounds):  # all in turn: a shared machine's drift falls on all
      a, b, *o = _time_calls(fns, images, args.reps // rounds, warmup=3 if r == 0 else 0)
      times_exp += a
      times_plain += b
      times_onnx += o[0] if o else []
      if peer is not None:
        times_timm += peer.call("time_clf", reps=args.reps // rounds)["times"]
        if "timm" in formats:
          times_tfmt += peer.call("time_clf", which="export", reps=args.reps // rounds)["times"]
    t_exp, t_plain = statistics.median(times_exp), statistics.median(times_plain)
    figures.emit("exported_over_plain_latency", round(t_exp / t_plain, 3), "ratio", batch=batch, goal="<= 1.05",
                 **common)
    for side, t in (("exported", t_exp), ("plain", t_plain)):
      figures.emit("classifier_forward_ms", round(t * 1e3, 3), "ms", side=side, batch=batch, reps=len(times_exp),
                   **common)
    for fmt, times in (("stablehlo", times_exp), ("onnx", times_onnx), ("timm", times_tfmt)):  # one row per format
      if times:
        extra = {"onnxruntime": ort.__version__} if fmt == "onnx" else {"jax": jax.__version__}
        if fmt == "timm":  # DIR/timm through timm.create_model, eager, + the head formula (docs/deploy.md)
          extra = {"torch": peer.info["torch"], "timm": peer.info["timm"], "mode": "eager",
                   "check": manifest["formats"]["timm"]["check"]}
        figures.emit("format_forward_ms", round(statistics.median(times) * 1e3, 3), "ms", format=fmt, batch=batch,
                     reps=len(times), **extra, **common)
    if tflite_python is not None:  # after the others, in the TensorFlow venv (same images: seed = batch)
      times = export_tflite.time_in(tflite_python, os.path.join(out, export_tflite.FILE), s, batch, args.reps)
      check = manifest["formats"]["tflite"]["check"]
      figures.emit("format_forward_ms", round(statistics.median(times) * 1e3, 3), "ms", format="tflite", batch=batch,
                   reps=len(times), tensorflow=check["tensorflow"], ai_edge_litert=check["ai_edge_litert"], **common)
    if peer is not None:
      t_timm = statistics.median(times_timm)
      figures.emit("classifier_forward_ms", round(t_timm * 1e3, 3), "ms", side="timm_channels_last", batch=batch,
                   reps=len(times_timm), torch=peer.info["torch"], timm=peer.info["timm"],
                   peer_device=peer.info["device_name"], peer_params=built["params"], **common)
      figures.emit("timm_over_exported_latency", round(t_timm / t_exp, 3), "ratio", batch=batch, goal=">= 1.3",
                   **common)
  if peer is not None:
    peer.close()
  step_dir = os.path.join(workdir, "checkpoints", str(run.step))
  if session is not None:
    figures.emit("onnx_bytes", _du(os.path.join(out, "classifier.onnx")), "bytes",
                 check=manifest["formats"]["onnx"]["check"], **common)
  if tflite_python is not None:
    figures.emit("tflite_bytes", _du(os.path.join(out, export_tflite.FILE)), "bytes",
                 check=manifest["formats"]["tflite"]["check"], **common)
  figures.emit("artifact_bytes", _du(os.path.join(out, export.ARTIFACT)), "bytes",
               folded_params=_du(os.path.join(out, export.PARAMS)), training_checkpoint=_du(step_dir),
               training_params_only=int(sum(np.asarray(x).nbytes for x in jax.tree.leaves((params, batch_stats)))),
               # a fresh init's checkpoint is small: its optimizer state and the hypernet's zero head compress away
               checkpoint_of="trained run" if args.workdir else "fresh init", **common)


if __name__ == "__main__":
  main(sys.argv[1:])
