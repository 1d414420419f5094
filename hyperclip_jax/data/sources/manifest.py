"""A manifest of image files with captions: JSON lines (`{"image": "rel/path.jpg", "caption": "..."}`) or CSV
with a header row naming the same columns. Relative image paths are relative to the manifest's folder; any
etils.epath path works. Random access: item i reads its image file's bytes when asked.
"""
import csv
import io
import json
from typing import Any

from etils import epath

from hyperclip_jax.data.bad_data import BadSample


class ManifestSource:
  """Random-access {'image': bytes, 'caption': str, 'key': str}; bad rows raise BadSample when read."""

  raw_examples = True  # items are bytes + text: the input pipeline decodes them with config.data.pp

  def __init__(self, path: str, image_key: str = "image", caption_key: str = "caption"):
    self.path = epath.Path(path)
    try:
      text = self.path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
      raise ValueError(f"config.data.manifest={path!r} cannot be read ({type(e).__name__}); pass an existing "
                       ".jsonl or .csv file") from None
    self.image_key, self.caption_key = image_key, caption_key
    if path.endswith(".csv"):
      self.rows: list[Any] = list(csv.DictReader(io.StringIO(text)))
    else:
      self.rows = [_json_row(line) for line in text.splitlines() if line.strip()]
    if not self.rows:
      raise ValueError(f"config.data.manifest={path!r} has no rows; write one JSON object (or CSV row) per image")

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> dict[str, Any]:
    row = self.rows[i]
    if not isinstance(row, dict):
      raise BadSample("bad_record", f"{self.path} row {i}: {row}")
    rel = row.get(self.image_key)
    if not rel:
      raise BadSample("missing_image", f"{self.path} row {i} has no {self.image_key!r}")
    caption = row.get(self.caption_key)
    if caption is None:
      raise BadSample("missing_caption", f"{self.path} row {i} has no {self.caption_key!r}")
    if not str(caption).strip():
      raise BadSample("empty_caption", f"{self.path} row {i}")
    image_path = self.path.parent / rel if not str(rel).startswith(("/", "gs://", "s3://")) else rel
    try:
      data = epath.Path(image_path).read_bytes()
    except Exception as e:  # any filesystem error is a skipped sample
      raise BadSample("missing_file", f"{image_path}: {type(e).__name__}") from None
    return {"image": data, "caption": str(caption).strip(), "key": str(rel)}


def _json_row(line: str) -> Any:
  try:
    row = json.loads(line)
  except ValueError as e:
    return f"not JSON ({e})"
  return row if isinstance(row, dict) else f"not a JSON object: {line[:80]}"
