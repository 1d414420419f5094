"""Where a run's files live: a local directory, or an object-store URI (gs://, s3://, ...) read through fsspec.

Local paths keep the plain os calls, so a local run writes exactly the files it always did. A URI goes through
fsspec (gcsfs for gs://, installed by `pip install "hyperclip_jax[gcs]"`); Orbax writes the checkpoints there
itself, through etils.epath and tensorstore. Object stores have no directories, no append and no rename, so
callers only create whole objects (atomic on GCS: an object appears complete or not at all).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import fsspec

# Schemes Orbax can write checkpoints to (etils.epath's URI schemes), and the package each needs.
CHECKPOINT_SCHEMES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class StorageError(ValueError):
  """A path whose filesystem cannot be used; the message says what to install or change."""


def scheme(path: str) -> str | None:
  """'gs' for 'gs://bucket/x', None for a local path."""
  path = os.fspath(path)
  return path.split("://", 1)[0] if "://" in path else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def resolve(path: str) -> str:
  """Absolute local path, or the URI without a trailing slash."""
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(path: str, *names: str) -> str:
  if is_remote(path):
    return "/".join([path.rstrip("/"), *names])
  return os.path.join(path, *names)


def filesystem(path: str) -> tuple[Any, str]:
  """(fsspec filesystem, path inside it) of a URI; StorageError naming the missing package if it is absent."""
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    package = CHECKPOINT_SCHEMES.get(scheme(path) or "", "")
    hint = (' pip install "hyperclip_jax[gcs]"' if package == "gcsfs" else
            f" pip install {package}" if package else " use a local path or gs://")
    raise StorageError(f"{path}: cannot open {scheme(path)}:// paths ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''});{hint}") from e


def check_workdir(path: str) -> None:
  """Raises StorageError unless checkpoints can be written to `path` (a local path or an epath scheme)."""
  s = scheme(path)
  if s is None:
    return
  if s not in CHECKPOINT_SCHEMES:
    raise StorageError(f"workdir {path}: Orbax checkpoints cannot be written to {s}:// paths; use a local path or "
                       f"one of {', '.join(k + '://' for k in CHECKPOINT_SCHEMES)}")
  filesystem(path)


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = filesystem(path)
  return fs.exists(p)


def isdir(path: str) -> bool:
  """A local directory, or a URI prefix with objects under it (object stores have no empty directories)."""
  if not is_remote(path):
    return os.path.isdir(path)
  fs, p = filesystem(path)
  return fs.isdir(p)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  fs, p = filesystem(path)
  return fs.isfile(p)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  fs, p = filesystem(path)
  return fs.cat_file(p)


def write_bytes(path: str, data: bytes) -> None:
  """Writes a whole file (one object upload on a store: readers see the old or the new bytes, never a part)."""
  if not is_remote(path):
    with open(path, "wb") as f:
      f.write(data)
    return
  fs, p = filesystem(path)
  fs.pipe_file(p, data)


def create_exclusive(path: str, data: bytes) -> bool:
  """Creates `path` holding `data` unless it exists; False if it does. Atomic where the store has a create
  precondition (gcsfs sends ifGenerationMatch=0, refused with 412 if the object exists; the memory filesystem
  checks under its lock); other fsspec filesystems fall back to fsspec's exists-then-write check."""
  fs, p = filesystem(path)
  try:
    fs.pipe_file(p, data, mode="create")
  except FileExistsError:
    return False
  return True


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  fs, p = filesystem(path)
  fs.rm_file(p)


def move(src: str, dst: str) -> None:
  """Moves a file or directory tree. On an object store this is copy-then-delete, object by object (not atomic;
  used only to set finished checkpoints aside, never to commit one)."""
  if not is_remote(src):
    shutil.move(src, dst)
    return
  fs, p = filesystem(src)
  _, q = filesystem(dst)
  fs.mv(p, q, recursive=True)
  fs.invalidate_cache()
