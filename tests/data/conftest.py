"""Writers of tiny real-format data sets (webdataset shards, manifests) for the data tests."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image


def jpeg(i: int, size: int = 16) -> bytes:
  """A small JPEG whose colour encodes i."""
  image = np.full((size, size + 4, 3), (i * 37 % 256, i * 91 % 256, 128), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG")
  return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shards(root, n_shards: int, per_shard: int, bad: dict | None = None, json_caption: bool = False):
  """Shards root/shard-{k:03d}.tar; sample i = n*per_shard+j has caption 'sample i'. `bad` maps sample ids to
  'jpeg' (corrupt image), 'empty' (blank caption) or 'nocaption'. Returns the brace pattern."""
  bad = bad or {}
  root.mkdir(parents=True, exist_ok=True)
  for k in range(n_shards):
    with tarfile.open(root / f"shard-{k:03d}.tar", "w") as tar:
      for j in range(per_shard):
        i = k * per_shard + j
        key = f"{i:06d}"
        image = b"\xff\xd8\xff\xe0 not really a jpeg" if bad.get(i) == "jpeg" else jpeg(i)
        add_member(tar, f"{key}.jpg", image)
        caption = "   " if bad.get(i) == "empty" else f"sample {i}"
        if bad.get(i) == "nocaption":
          continue
        if json_caption:
          add_member(tar, f"{key}.json", json.dumps({"caption": caption, "id": i}).encode())
        else:
          add_member(tar, f"{key}.txt", caption.encode())
  return str(root / ("shard-{000.." + f"{n_shards - 1:03d}" + "}.tar"))


def truncate(path) -> None:
  """Cuts a shard in the middle of its last member's data."""
  with tarfile.open(path) as tar:
    last = tar.getmembers()[-1]
  data = open(path, "rb").read()
  open(path, "wb").write(data[:last.offset_data + last.size // 2])


@pytest.fixture
def shards(tmp_path):
  return lambda *a, **kw: write_shards(tmp_path / "shards", *a, **kw)
