"""Client of the PyTorch peer server (bench/peer_torch.py) and the input recipe both sides share (numpy only).

The peer runs in its own venv as a subprocess: one JSON request per line in, one JSON answer per line out, so
the JAX side (this process) and the torch side can be timed turn by turn in one run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_torch.py")
DEFAULT_PYTHON = os.path.join(os.path.dirname(SERVER), "..", ".venv-peer", "bin", "python")


def images(seed: int, batch: int, size: int) -> np.ndarray:
  """float32 [B, H, W, 3] in [-1, 1]: the train batch's images on both sides."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype(np.float32)


def tokens(seed: int, batch: int, max_len: int, vocab: int, pad_id: int) -> np.ndarray:
  """int32 [B, L]: 3..L-1 random ids >= 3 (past the specials) then pad_id: the train batch's captions."""
  rng = np.random.default_rng(seed + 1)
  lengths = rng.integers(3, max_len, batch)
  ids = rng.integers(3, vocab, (batch, max_len))
  ids[np.arange(max_len)[None, :] >= lengths[:, None]] = pad_id
  return ids.astype(np.int32)


def uint8_images(seed: int, batch: int, size: int) -> np.ndarray:
  """uint8 [B, H, W, 3]: the classifier benchmark's input on both sides."""
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


class PeerError(RuntimeError):
  """The peer could not start or answered with an error."""


class Peer:
  """A running peer server; `call(op, **fields)` returns its answer (a dict) or raises PeerError."""

  def __init__(self, python: str, device: str = "cpu", threads: int | None = None):
    python = shutil.which(python) or python  # a bare name (gpu.sh's python3) is looked up on PATH
    if not os.path.exists(python):
      raise PeerError(f"peer python {python!r} does not exist: run `make bench-peer` (creates .venv-peer) or "
                      f"pass --peer-python PATH (a python with torch and timm)")
    env = dict(os.environ)
    if device == "cpu":
      # On a shared CPU, OpenMP threads that spin at barriers wait out other processes' time slices: a torch step
      # on this 2-core machine under load ran 40x slower with 2 spinning threads than with 1. Passive waiting
      # (threads sleep at barriers) removes that; on an idle machine it costs little.
      env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    self.proc = subprocess.Popen([python, SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 stderr=sys.stderr, env=env)
    self.info = self.call("init", device=device, threads=threads)
    self.info["omp_wait_policy"] = env.get("OMP_WAIT_POLICY")

  def call(self, op: str, **fields: Any) -> dict[str, Any]:
    try:
      self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except (BrokenPipeError, OSError) as e:
      raise PeerError(f"peer server died before op {op!r}: {e}") from e
    if not line:
      raise PeerError(f"peer server exited during op {op!r} (exit code {self.proc.poll()}); see its stderr above")
    resp = json.loads(line)
    if not resp.pop("ok"):
      raise PeerError(f"peer op {op!r} failed: {resp['error']}")
    return resp

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write('{"op": "quit"}\n')
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
        self.proc.kill()

  def __enter__(self) -> "Peer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
