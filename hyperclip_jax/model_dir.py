"""A model directory: one trained model, whole, without optimizer or data state, readable by plain Orbax.

  hyperclip-export --workdir runs/demo --model-only --out runs/demo/model

DIR holds
  params/          Orbax StandardCheckpointer (PyTree) of a plain dict of numpy arrays:
                   {"params": {"txt": text tower, "hyper": hypernetwork (absent for baselines), "img": image tower,
                               "t": log temperature t', "b": bias b}, "batch_stats": {"img": BatchNorm statistics}}
  config.json      the run's resolved config (what two_towers.build_model reads)
  tokenizer.json   the tokenizer spec and max_len; vocabulary files it names are copied to tokenizer/
  model.json       format version, source workdir, step and config hash, and the run's eval metrics at that step
  README.md        a model card (model_card.render_model)

`orbax.checkpoint.StandardCheckpointer().restore(DIR + "/params")` reads the weights with no project import;
`load_model(DIR)` rebuilds the model, and hyperclip-export / hyperclip-eval take DIR as their --workdir.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hyperclip_jax import config as config_lib
from hyperclip_jax import model_card, storage
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.data import tokenizers
from hyperclip_jax.models import two_towers

PARAMS = "params"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
MARKER = "model.json"  # what tells a model directory from a training workdir
FORMAT_VERSION = 1
class ModelDirError(ValueError):
  """A model directory that cannot be written or read; the message says what to do."""


_VOCAB_ARG = re.compile(r"\b(model|vocab)\s*=\s*(['\"])([^'\"]+)\2")  # sentencepiece(model=...), clip_bpe(vocab=...)


def is_model_dir(path: str) -> bool:
  try:
    return storage.isfile(storage.join(path, MARKER))
  except storage.StorageError:
    return False


def open_config(path: str) -> ml_collections.ConfigDict:
  """The config of a training workdir or of a model directory (hyperclip-export / hyperclip-eval --workdir)."""
  return read_config(path) if is_model_dir(path) else workdir_lib.read_config(path)


def open_run(path: str, step: int | None = None, config: Any = None) -> workdir_lib.Run:
  """The params of a training workdir's checkpoint, or of a model directory's one step (workdir_lib.Run)."""
  return load_run(path, step, config) if is_model_dir(path) else workdir_lib.load_run(path, step, config)


def eval_metrics(workdir: str, step: int) -> dict[str, float]:
  """The run's evaluator metrics logged at `step` (metrics.jsonl), else eval/step_<step>.json; {} if none. A model
  directory answers with those its source run had (model.json)."""
  found: dict[str, float] = {}
  if is_model_dir(workdir):
    meta = read_meta(workdir)
    found = dict(meta.get("eval_metrics", {})) if meta["source"]["step"] == step else {}
  path = storage.join(workdir, "metrics.jsonl")
  if not found and storage.isfile(path):
    for line in storage.read_bytes(path).decode("utf-8").splitlines():
      row = json.loads(line) if line.strip() else {}
      if row.get("step") == step:
        found.update({k: float(v) for k, v in row.items()
                      if k != "step" and not k.startswith(("train/", "perf/", "data/", "time/", "params_"))
                      and isinstance(v, (int, float))})
  path = storage.join(workdir, "eval", f"step_{step}.json")
  if not found and storage.isfile(path):
    found = {k: float(v) for k, v in json.loads(storage.read_bytes(path).decode("utf-8"))["metrics"].items()}
  return found


def write_model_dir(run: Any, out_dir: str) -> dict[str, Any]:
  """Writes `run` (a workdir.Run) as a model directory; returns model.json's contents."""
  if storage.is_remote(out_dir):
    raise ModelDirError(f"--out {out_dir!r}: write the model directory to a local path, then copy it")
  config = run.config
  tree = {"params": jax.tree.map(np.asarray, jax.device_get(run.params)),
          "batch_stats": jax.tree.map(np.asarray, jax.device_get(run.batch_stats))}
  os.makedirs(out_dir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(os.path.join(out_dir, PARAMS)), tree, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(out_dir, CONFIG), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  spec = str(config.data.tokenizer)
  files = {}
  for _, _, path in _VOCAB_ARG.findall(spec):
    name = os.path.join("tokenizer", os.path.basename(path))
    os.makedirs(os.path.join(out_dir, "tokenizer"), exist_ok=True)
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(storage.read_bytes(path))
    files[path] = name
  with open(os.path.join(out_dir, TOKENIZER), "w", encoding="utf-8") as f:
    json.dump({"spec": spec, "max_len": int(config.data.max_len), "files": files}, f, indent=2)
  meta = {"format_version": FORMAT_VERSION, "kind": "hyperclip_jax model",
          "source": {"workdir": storage.resolve(run.workdir), "step": int(run.step), "config_hash": run.config_hash},
          "variant": config.model.variant, "image_encoder": config.model.image.name,
          "image_size": int(config.data.image_size),
          "params": sorted(tree["params"]), "eval_metrics": eval_metrics(run.workdir, int(run.step))}
  with open(os.path.join(out_dir, MARKER), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, model_card.CARD), "w", encoding="utf-8") as f:
    f.write(model_card.render_model(meta, config))
  return meta


def read_meta(directory: str) -> dict[str, Any]:
  return json.loads(storage.read_bytes(storage.join(directory, MARKER)).decode("utf-8"))


def read_config(directory: str) -> Any:
  """The model's config, with a copied vocabulary file's path pointing into the directory."""
  config = ml_collections.ConfigDict(json.loads(storage.read_bytes(storage.join(directory, CONFIG)).decode()))
  return _localize(config, directory)


def _localize(config: Any, directory: str) -> Any:
  """`config` with the tokenizer's vocabulary file(s) read from the directory's copies."""
  tok = json.loads(storage.read_bytes(storage.join(directory, TOKENIZER)).decode("utf-8"))
  spec = str(config.data.tokenizer)
  for original, copy in tok.get("files", {}).items():
    spec = spec.replace(original, storage.join(storage.resolve(directory), *copy.split("/")))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.tokenizer = spec
  return config


def load_run(directory: str, step: int | None = None, config: Any = None) -> Any:
  """The model directory as a workdir.Run (what hyperclip-export and hyperclip-eval read); `config` overrides
  config.json but must describe the same model."""
  meta = read_meta(directory)
  if meta.get("format_version") != FORMAT_VERSION:
    raise workdir_lib.RunError(f"model directory {directory!r} has format_version {meta.get('format_version')}; "
                               f"this hyperclip_jax reads {FORMAT_VERSION}: re-export it with --model-only")
  saved = meta["source"]["step"]
  if step is not None and step != saved:
    raise workdir_lib.RunError(f"model directory {directory!r} holds step {saved} only; drop --step or pass "
                               f"--step {saved}")
  stored = read_config(directory)
  config = stored if config is None else _localize(config, directory)
  if config_lib.model_signature(config) != config_lib.model_signature(stored):
    raise workdir_lib.RunError(f"the given config describes another model than {directory!r} holds; pass a config "
                               "with its config.model (or none: its own config.json)")
  tree = dict(ocp.StandardCheckpointer().restore(storage.resolve(storage.join(directory, PARAMS))))
  tree["batch_stats"] = {"img": {}, **(tree.get("batch_stats") or {})}  # a ViT's is empty: Orbax drops it
  _check_shapes(config, tree, directory)
  return workdir_lib.Run(directory, config, int(saved), tree["params"], tree["batch_stats"])


def _check_shapes(config: Any, tree: dict[str, Any], directory: str) -> None:
  want = jax.eval_shape(two_towers.build_model(config).init, jax.random.PRNGKey(0))
  want = {"params": want["params"], "batch_stats": want.get("batch_stats", {})}
  shape = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)  # noqa: E731
  if jax.tree.structure(shape(want)) != jax.tree.structure(shape(tree)) or shape(want) != shape(tree):
    raise workdir_lib.RunError(f"model directory {directory!r}: params/ does not match its config.json's model; "
                               "re-export it with hyperclip-export --model-only")


@dataclasses.dataclass
class Model:
  """A loaded model directory: the flax model, its params and batch_stats, the tokenizer and config."""
  directory: str
  config: Any
  step: int
  model: Any  # two_towers.TwoTowers
  params: Any
  batch_stats: Any
  tokenizer: Any
  meta: dict[str, Any]

  def encode_text(self, texts: list[str]) -> np.ndarray:
    """L2-normalised text embeddings [N, D]."""
    tokens = self.tokenizer.encode(list(texts), self.config.data.max_len)
    return np.asarray(jax.jit(self.model.encode_text)(self.params, tokens))


def load_model(directory: str) -> Model:
  """Rebuilds the model of a model directory (hyperclip-export --model-only)."""
  if not is_model_dir(directory):
    raise ModelDirError(f"{directory!r} is not a model directory (no {MARKER}); write one with "
                     "hyperclip-export --workdir RUN --model-only --out DIR")
  run = load_run(directory)
  return Model(directory, run.config, run.step, two_towers.build_model(run.config), run.params, run.batch_stats,
               tokenizers.get_tokenizer(run.config.data.tokenizer), read_meta(directory))
