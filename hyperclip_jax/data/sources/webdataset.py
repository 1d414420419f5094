"""webdataset `.tar` shards (the DataComp / LAION format): files `KEY.jpg` + `KEY.txt` (or `KEY.json`) per sample.

`expand_pattern('shards/{00000000..00012556}.tar')` lists shards (brace ranges and lists, `*` globs, several
patterns joined by '::'), on any filesystem etils.epath reads (local; gs:// once `pip install ".[gcs]"`).
`read_shard(path, skip)` streams one shard's samples as `{extension: bytes}` dicts, reading members in memory
(never extracting: a member named `../x` or `/etc/x` is only a dictionary key). Problems become `BadSample`
items in the stream, at the place they occur, so that a resumed reader meets and counts them exactly as often
as an uninterrupted one:
`unreadable_shard` (cannot be opened, not a tar) and `truncated_tar` (ends mid-member; earlier samples kept).
"""
import json
import re
import tarfile
from typing import Any, Iterator

from etils import epath

from hyperclip_jax import storage
from hyperclip_jax.data.bad_data import BadSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
  m = _BRACE.search(pattern)
  if m is None:
    return [pattern]
  body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
  rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if rng:
    lo, hi = rng.group(1), rng.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    items = body.split(",")
  return [out for item in items for out in _expand_braces(head + item + tail)]


def expand_pattern(pattern: str) -> list[str]:
  """Shard paths of a pattern, in order; globs are listed through etils.epath (missing files stay listed and
  are reported as unreadable when read)."""
  paths = []
  for part in filter(None, pattern.split("::")):
    if storage.is_remote(part.strip()):  # gs:// without gcsfs: a one-line install hint, not "no shard found"
      storage.filesystem(part.strip())
    for path in _expand_braces(part.strip()):
      if any(c in path for c in "*?["):
        paths += sorted(str(p) for p in epath.Path(path).parent.glob(epath.Path(path).name))
      else:
        paths.append(path)
  return paths


def any_exists(paths: list[str]) -> bool:
  for path in paths:
    try:
      if epath.Path(path).exists():
        return True
    except Exception:  # an unreachable filesystem counts as missing
      pass
  return False


def _split_name(name: str) -> tuple[str, str]:
  """'dir/abc.seg.jpg' -> ('dir/abc', 'seg.jpg'): the key is everything before the basename's first dot."""
  slash = name.rfind("/") + 1
  dot = name.find(".", slash)
  if dot < 0:
    return name, ""
  return name[:dot], name[dot + 1:].lower()


def _file_size(f: Any) -> int | None:
  try:
    size = f.seek(0, 2)
    f.seek(0)
    return size
  except (OSError, AttributeError, ValueError):
    return None


def read_shard(path: str, skip: int = 0) -> Iterator[dict[str, bytes] | BadSample]:
  """Items of one shard from item `skip` on: sample dicts {'__key__': str, ext: bytes} or BadSample.

  Skipped items are counted from headers only (their member data is seeked over, not read).
  """
  index = 0  # items seen so far

  def wanted() -> bool:
    nonlocal index
    index += 1
    return index > skip

  try:
    f = epath.Path(path).open("rb")
  except Exception as e:  # any filesystem error: the shard is skipped, never fatal
    if wanted():
      yield BadSample("unreadable_shard", f"{path}: {type(e).__name__}: {e}")
    return
  with f:
    size = _file_size(f)
    try:
      tar = tarfile.open(fileobj=f, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
      if wanted():
        yield BadSample("unreadable_shard", f"{path}: not a tar file ({e})")
      return
    plain = size is not None and tar.fileobj is f  # uncompressed: truncation is visible from offsets
    key, sample = None, {}
    try:
      while True:
        member = tar.next()
        if member is None:
          break
        tar.members.clear()  # tarfile would keep every header
        if not member.isfile():
          continue
        k, ext = _split_name(member.name)
        if k != key and sample:
          if wanted():
            yield sample
          sample = {}
        key = k
        if plain and member.offset_data + member.size > size:
          raise tarfile.ReadError("unexpected end of data")
        sample["__key__"] = k
        if index >= skip:  # this sample will be yielded: read its members, in memory only
          data = tar.extractfile(member).read()
          if len(data) != member.size:
            raise tarfile.ReadError("unexpected end of data")
          sample[ext] = data
      if plain and tar.offset < size:  # a cut header ends tarfile's loop silently: the rest must be zeros
        f.seek(tar.offset)
        rest = f.read(min(size - tar.offset, 1 << 16))
        if size - tar.offset > 1 << 16 or rest.strip(b"\0"):
          raise tarfile.ReadError("truncated header")
    except (tarfile.TarError, OSError, EOFError) as e:
      if wanted():
        yield BadSample("truncated_tar", f"{path}: {e}")
      return
    if sample and wanted():
      yield sample


def to_example(sample: dict[str, Any], caption_key: str = "txt") -> dict[str, Any]:
  """A shard sample -> {'image': bytes, 'caption': str, 'key': str}; raises BadSample when a part is missing.

  caption_key: a member extension ('txt') or 'json:FIELD' for a field of the sample's json member.
  """
  image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
  if image is None:
    raise BadSample("missing_image", f"sample {sample.get('__key__')!r} has no {'/'.join(IMAGE_EXTENSIONS)} member")
  if caption_key.startswith("json:"):
    if "json" not in sample:
      raise BadSample("missing_caption", f"sample {sample.get('__key__')!r} has no json member")
    try:
      meta = json.loads(sample["json"])
    except ValueError as e:
      raise BadSample("bad_record", f"sample {sample.get('__key__')!r}: json: {e}") from None
    caption = meta.get(caption_key[5:]) if isinstance(meta, dict) else None
  else:
    caption = sample.get(caption_key)
  if caption is None:
    raise BadSample("missing_caption", f"sample {sample.get('__key__')!r} has no {caption_key!r}")
  if isinstance(caption, bytes):
    caption = caption.decode("utf-8", errors="replace")
  caption = str(caption).strip()
  if not caption:
    raise BadSample("empty_caption", f"sample {sample.get('__key__')!r}")
  return {"image": image, "caption": caption, "key": sample.get("__key__", "")}
