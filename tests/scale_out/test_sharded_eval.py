"""Zero-shot evaluation split across hosts: two processes (2 CPU devices each), each decoding half of every
eval set, give exactly the metrics of one process with 4 devices reading everything."""
import json
import os
import subprocess
import sys

import numpy as np
import scale_helpers as h
from PIL import Image

from hyperclip_jax import train


def _eval(workdir, env, port=None, rank=None):
  args = [sys.executable, "-m", "hyperclip_jax.evaluate", "--workdir", workdir,
          "--config.evals.zeroshot.n_eval=37", "--config.evals.zeroshot.batch_size=16"]
  if port is not None:
    env = {**env, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(rank)}
  return subprocess.Popen(args, cwd=h.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _env(one_device_env, devices):
  env = {k: v for k, v in one_device_env.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM",
                                                                     "JAX_PROCESS", "TPU_"))}
  xla = env["XLA_FLAGS"].replace("device_count=1", f"device_count={devices}")
  return {**env, "XLA_FLAGS": xla, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_two_hosts_each_decoding_half_give_the_one_host_metrics(tmp_path, one_device_env):
  (tmp_path / "classes.txt").write_text("red thing\ngreen thing\nblue thing\n")
  rows, colours = [], [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
  for i in range(11):  # 11 items, one bad: hosts hold 6 and 5 items, 5 and 5 good ones, padded to one batch
    Image.fromarray(np.full((40, 36, 3), colours[i % 3], np.uint8)).save(tmp_path / f"{i}.jpg")
    rows.append({"image": f"{i}.jpg", "label": ["red thing", "green thing", "blue thing"][i % 3] if i != 4
                 else "purple thing"})
  (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = h.fast_config(**{"total_steps": 2, "checkpoint_every_steps": 2, "eval_every_steps": 0})
  with config.unlocked():
    config.evals.zeroshot.tasks = "demo:colour,demo:position"
    config.evals.colours = dict(type="zeroshot", data=dict(name="manifest", manifest=str(tmp_path / "val.jsonl")),
                                classes=str(tmp_path / "classes.txt"), batch_size=8)
  workdir = str(tmp_path / "run")
  train.train(config, workdir)

  procs = [_eval(workdir, _env(one_device_env, 2), 12483, rank) for rank in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
  for rank, out in enumerate(outs):
    assert f"zero-shot: host {rank} of 2 decodes 1/2 of each eval set" in out
  path = os.path.join(workdir, "eval", "step_2.json")
  two_hosts = json.load(open(path))
  os.remove(path)

  proc = _eval(workdir, _env(one_device_env, 4))
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, out[-3000:]
  one_host = json.load(open(path))
  assert two_hosts["results"] == one_host["results"]
  assert one_host["results"]["colour"]["num_images"] == 37 and one_host["results"]["colours"]["num_images"] == 10
