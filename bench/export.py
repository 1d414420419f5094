"""The exported zero-shot classifier against the plain image encoder: forward time and size on disk.

  .venv/bin/python bench/export.py [--workdir RUN] [--config configs/demo.py] [--classes demo:colour]
                                   [--reps 50] [--config.a.b=v ...]

Prints one JSON line per figure. "exported" is load_classifier(DIR) (the deserialized StableHLO artifact:
folded weights, uint8 images -> logits); "plain" is the same image tower with its own norm params and no
hypernet (the SigLIP baseline's deployment: BatchNorm in eval mode, unfolded), jitted, with the same input
conversion and logits. Goal: exported / plain <= 1.05 (folding should make it at most as slow). Without
--workdir, a run of random weights is written to a temporary workdir (same shapes and checkpoint size as a
trained one of the config).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperclip_jax import checkpoint as ckpt_lib
from hyperclip_jax import config as config_lib
from hyperclip_jax import export
from hyperclip_jax import optim
from hyperclip_jax import sharding
from hyperclip_jax import train
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames
from hyperclip_jax.models import two_towers


def _emit(**row):
  print(json.dumps(row), flush=True)


def _du(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _time_pair(fn_a, fn_b, x, reps: int) -> tuple[float, float]:
  """Median seconds per call of fn_a and fn_b, alternated call by call (a shared CPU's load drifts), after
  warm-up calls (compile excluded)."""
  for _ in range(3):
    jax.block_until_ready((fn_a(x), fn_b(x)))
  times_a, times_b = [], []
  for _ in range(reps):
    for fn, times in ((fn_a, times_a), (fn_b, times_b)):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x))
      times.append(time.perf_counter() - t0)
  return statistics.median(times_a), statistics.median(times_b)


def _write_run(config, workdir: str) -> str:
  """A workdir with config.json and one checkpoint of freshly initialised weights."""
  model = two_towers.build_model(config)
  rng = jax.random.PRNGKey(config.seed)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps, jax.eval_shape(model.init, rng)["params"])
  state = train.init_state(model, tx, rng, sharding.make_mesh(config.mesh))
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
  export.export_classifier(run, names, templates, out, platforms=(jax.export.default_export_platform(),))
  clf = export.load_classifier(out)
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
  rng = np.random.default_rng(0)
  for batch in (1, 32):
    images = rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    t_exp, t_plain = _time_pair(clf, lambda x: np.asarray(plain(x)), images, args.reps)  # both: numpy logits
    _emit(figure="forward_ms", batch=batch, exported=round(t_exp * 1e3, 3), plain=round(t_plain * 1e3, 3),
          **common)
    _emit(figure="exported_over_plain", batch=batch, ratio=round(t_exp / t_plain, 3), goal="<= 1.05", **common)
  step_dir = os.path.join(workdir, "checkpoints", str(run.step))
  _emit(figure="size_bytes", artifact=_du(os.path.join(out, export.ARTIFACT)),
        folded_params=_du(os.path.join(out, export.PARAMS)), training_checkpoint=_du(step_dir),
        training_params_only=int(sum(np.asarray(x).nbytes for x in jax.tree.leaves((params, batch_stats)))),
        # a fresh init's checkpoint is small: its optimizer state and the hypernet's zero head compress away
        checkpoint_of="trained run" if args.workdir else "fresh init", **common)


if __name__ == "__main__":
  main(sys.argv[1:])
