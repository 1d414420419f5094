"""Preprocessing ops in big_vision's string syntax, run in numpy/PIL: `decode|resize(224)|value_range(-1, 1)`.

`build(spec, tokenizer=..., max_len=...)` parses a spec into one function `fn(example, rng) -> example` over a
dict of fields. Ops are `name` or `name(args)` with Python literal arguments, joined by '|'. Images move
between ops as PIL images and become numpy arrays at the end or at `value_range`. A JPEG is decoded at
1/2, 1/4 or 1/8 scale (PIL's draft mode: a cheaper DCT decode) when the op right after decode (resize,
resize_small, inception_crop with a size) still gets at least its output size from it: crops are drawn in
full-size coordinates from the same rng, so their statistics do not change; pixels differ from full decode +
resize by a mean of <= 1.5 levels in 255 per image, none by more than 16, on photo-like JPEGs (tests/data/
test_pp.py pins it; decode(draft=False) opts out).
decode(draft_upscale=u) lets the next op enlarge a reduced decode by up to u (blurrier, faster: a 512 px photo
is rarely cropped to >= 448 px, the size a 1/2 decode needs for a 224 output; docs/data.md has the figures). An undecodable or oversized image
raises `BadSample`, which the pipeline counts and skips.

Ops (arguments as in big_vision; `key` names the field an op works on):
  decode(key='image', max_pixels=64_000_000, draft=True, draft_upscale=1.0)  bytes -> RGB image (see above)
  resize(size, key='image', method='bilinear')        size: int or (height, width)
  resize_small(smaller_size, key='image', method='bilinear')  keeps the aspect ratio
  central_crop(size, key='image')   random_crop(size, key='image')
  inception_crop(size=None, area_min=5, area_max=100, key='image')  random area % and aspect crop, then resize
  flip_lr(key='image')                                 random left-right flip
  value_range(vmin=-1, vmax=1, in_min=0, in_max=255, clip_values=False, key='image')  -> float32
  tokenize(max_len=None, inkey='caption', outkey='text')  -> int32 [max_len] with the pipeline's tokenizer
  keep(*keys)    rename(**old_to_new)
"""
import ast
import inspect
import io
import math
from typing import Any, Callable

import numpy as np
from PIL import Image

from hyperclip_jax.data.bad_data import BadSample

Example = dict[str, Any]
Op = Callable[[Example, "Context"], Example]
_METHODS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX,
            "lanczos": Image.Resampling.LANCZOS}
_IMAGE_ERRORS = (OSError, SyntaxError, EOFError, Image.DecompressionBombError, Image.UnidentifiedImageError)


class Context:
  """What ops may use besides the example: the per-sample rng, the tokenizer and its default length."""

  def __init__(self, rng: np.random.Generator, tokenizer: Any = None, max_len: int | None = None):
    self.rng, self.tokenizer, self.max_len = rng, tokenizer, max_len


class _Undecoded:
  """An opened, not yet decoded image file: the next op may ask for a reduced-size JPEG decode (unless
  decode(draft=False))."""

  def __init__(self, image: Image.Image, draft: bool = True, draft_upscale: float = 1.0):
    self.image, self.draft, self.upscale = image, draft, draft_upscale


def _pil(value: Any, at_least: tuple[int, int] | None = None) -> Image.Image:
  """The field as an RGB PIL image; an undecoded JPEG is decoded at the smallest of the DCT scales 1, 1/2,
  1/4, 1/8 that keeps it >= at_least (w, h) (PIL's draft mode: the decoder skips the finer coefficients)."""
  if isinstance(value, _Undecoded):
    image = value.image
    if at_least is not None and value.draft and image.format == "JPEG":
      image.draft("RGB", tuple(math.ceil(n / value.upscale) for n in at_least))
    if image.mode == "RGB":  # convert() would copy
      image.load()
      return image
    return image.convert("RGB")
  if isinstance(value, Image.Image):
    return value
  if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
    return Image.fromarray(value) if value.shape[-1] == 3 else Image.fromarray(value[..., 0]).convert("RGB")
  raise ValueError(f"pp: expected an image field (decode it first), got {type(value).__name__}")


def _hw(size: Any, op: str) -> tuple[int, int]:
  hw = (size, size) if isinstance(size, int) else tuple(size)
  if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
    raise ValueError(f"pp op {op}: size={size!r} must be a positive int or (height, width)")
  return hw


def _method(method: str, op: str) -> int:
  if method not in _METHODS:
    raise ValueError(f"pp op {op}: method={method!r} is unknown; known: {', '.join(_METHODS)}")
  return _METHODS[method]


def to_numpy(value: Any) -> Any:
  """Image-like fields (PIL, undecoded) -> uint8 [H, W, 3]; anything else unchanged."""
  if isinstance(value, (_Undecoded, Image.Image)):
    return np.asarray(_pil(value))
  return value


# --- ops: each returns `fn(example, ctx) -> example`; arguments are checked when the spec is built. ---

def decode(key: str = "image", max_pixels: int = 64_000_000, draft: bool = True, draft_upscale: float = 1.0) -> Op:
  if not draft_upscale >= 1.0:
    raise ValueError(f"pp op decode: draft_upscale={draft_upscale} must be >= 1 (1: a reduced decode is never "
                     "enlarged)")
  def fn(ex, ctx):
    data = ex.get(key)
    if data is None or (isinstance(data, (bytes, bytearray)) and not data):
      raise BadSample("missing_image", f"no {key!r} field")
    if not isinstance(data, (bytes, bytearray)):
      ex[key] = to_numpy(data) if isinstance(data, Image.Image) else data  # already decoded
      return ex
    try:
      image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
      raise BadSample("image_too_large", str(e)) from None
    except _IMAGE_ERRORS as e:
      raise BadSample("bad_image", str(e)) from None
    if image.width * image.height > max_pixels:
      raise BadSample("image_too_large", f"{image.width}x{image.height} exceeds max_pixels={max_pixels}")
    ex[key] = _Undecoded(image, draft, float(draft_upscale))
    return ex
  return fn


def resize(size: Any, key: str = "image", method: str = "bilinear") -> Op:
  h, w = _hw(size, "resize")
  resample = _method(method, "resize")
  def fn(ex, ctx):
    ex[key] = _pil(ex[key], at_least=(w, h)).resize((w, h), resample)
    return ex
  return fn


def resize_small(smaller_size: int, key: str = "image", method: str = "bilinear") -> Op:
  _hw(smaller_size, "resize_small")
  resample = _method(method, "resize_small")
  def fn(ex, ctx):
    value = ex[key]
    src = value.image if isinstance(value, _Undecoded) else _pil(value)
    scale = smaller_size / min(src.width, src.height)
    w, h = max(1, round(src.width * scale)), max(1, round(src.height * scale))
    ex[key] = _pil(value, at_least=(w, h)).resize((w, h), resample)
    return ex
  return fn


def _crop(image: Image.Image, top: int, left: int, h: int, w: int) -> Image.Image:
  return image.crop((left, top, left + w, top + h))


def central_crop(size: Any, key: str = "image") -> Op:
  h, w = _hw(size, "central_crop")
  def fn(ex, ctx):
    image = _pil(ex[key])
    if image.height < h or image.width < w:
      raise BadSample("image_too_small", f"{image.height}x{image.width} < central_crop({h}, {w}); resize first")
    ex[key] = _crop(image, (image.height - h) // 2, (image.width - w) // 2, h, w)
    return ex
  return fn


def random_crop(size: Any, key: str = "image") -> Op:
  h, w = _hw(size, "random_crop")
  def fn(ex, ctx):
    image = _pil(ex[key])
    if image.height < h or image.width < w:
      raise BadSample("image_too_small", f"{image.height}x{image.width} < random_crop({h}, {w}); resize first")
    top = int(ctx.rng.integers(0, image.height - h + 1))
    left = int(ctx.rng.integers(0, image.width - w + 1))
    ex[key] = _crop(image, top, left, h, w)
    return ex
  return fn


def inception_crop(size: Any = None, area_min: float = 5, area_max: float = 100, key: str = "image",
                   method: str = "bilinear") -> Op:
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"pp op inception_crop: need 0 < area_min={area_min} <= area_max={area_max} <= 100")
  hw = None if size is None else _hw(size, "inception_crop")
  resample = _method(method, "inception_crop")
  log_ratio = (math.log(3 / 4), math.log(4 / 3))

  def fn(ex, ctx):
    value = ex[key]
    src = value.image if isinstance(value, _Undecoded) else _pil(value)  # the size is known before decoding
    H, W = src.height, src.width
    box = None
    for _ in range(10):  # as tf.image.sample_distorted_bounding_box: retry, then fall back to the centre
      area = H * W * ctx.rng.uniform(area_min, area_max) / 100
      ratio = math.exp(ctx.rng.uniform(*log_ratio))
      w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
      if 0 < w <= W and 0 < h <= H:
        box = (int(ctx.rng.integers(0, H - h + 1)), int(ctx.rng.integers(0, W - w + 1)), h, w)
        break
    if box is None:
      s = min(H, W)
      box = ((H - s) // 2, (W - s) // 2, s, s)
    if hw is None:
      ex[key] = _crop(_pil(value), *box)
      return ex
    top, left, h, w = box
    # Decode no finer than the crop needs: the crop stays >= the output size in the reduced image.
    image = _pil(value, at_least=(math.ceil(W * hw[1] / w), math.ceil(H * hw[0] / h)))
    if (image.width, image.height) == (W, H):
      ex[key] = _crop(image, *box).resize((hw[1], hw[0]), resample)
    else:  # the same box in the reduced image's coordinates (DCT scale k: ceil(W / k) pixels)
      k = next((k for k in (2, 4, 8) if -(-W // k) == image.width), W / image.width)
      ex[key] = image.resize((hw[1], hw[0]), resample, box=(left / k, top / k, (left + w) / k, (top + h) / k))
    return ex
  return fn


def flip_lr(key: str = "image") -> Op:
  def fn(ex, ctx):
    image = _pil(ex[key])
    ex[key] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if ctx.rng.random() < 0.5 else image
    return ex
  return fn


def value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0, in_max: float = 255,
                clip_values: bool = False, key: str = "image") -> Op:
  if in_max <= in_min:
    raise ValueError(f"pp op value_range: in_max={in_max} must exceed in_min={in_min}")
  scale = np.float32((vmax - vmin) / (in_max - in_min))
  def fn(ex, ctx):
    x = np.asarray(to_numpy(ex[key]), np.float32)
    if clip_values:
      x = np.clip(x, in_min, in_max)
    ex[key] = (x - np.float32(in_min)) * scale + np.float32(vmin)
    return ex
  return fn


def tokenize(max_len: int | None = None, inkey: str = "caption", outkey: str = "text") -> Op:
  def fn(ex, ctx):
    if ctx.tokenizer is None:
      raise ValueError("pp op tokenize needs a tokenizer; build the pp spec with tokenizer=...")
    text = ex.get(inkey)
    if text is None:
      raise BadSample("missing_caption", f"no {inkey!r} field")
    if not str(text).strip():
      raise BadSample("empty_caption")
    ex[outkey] = ctx.tokenizer.encode([str(text)], max_len or ctx.max_len)[0]
    return ex
  return fn


def keep(*keys: str) -> Op:
  def fn(ex, ctx):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise ValueError(f"pp op keep: fields {missing} are missing; the example has {sorted(ex)}")
    return {k: ex[k] for k in keys}
  return fn


def rename(**old_to_new: str) -> Op:
  def fn(ex, ctx):
    return {old_to_new.get(k, k): v for k, v in ex.items()}
  return fn


OPS: dict[str, Callable[..., Op]] = {f.__name__: f for f in (
    decode, resize, resize_small, central_crop, random_crop, inception_crop, flip_lr, value_range, tokenize,
    keep, rename)}


def _split(spec: str) -> list[str]:
  """Splits on '|' outside parentheses and quotes."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(spec):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
  parts.append(spec[start:])
  return [p.strip() for p in parts]


def _signature(name: str) -> str:
  return f"{name}{inspect.signature(OPS[name])}".replace(" -> Op", "")


def split_spec(spec: str) -> list[str]:
  """The op strings of a pp spec, in order ('decode|resize(64)' -> ['decode', 'resize(64)'])."""
  return [part for part in _split(spec) if part]


def parse_call(text: str, table: dict[str, Callable[..., Any]], what: str) -> tuple[str, tuple, dict]:
  """'name' or 'name(literal args)' -> (name, args, kwargs); errors list the known names."""
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise ValueError(f"{what} {text!r} is not `name` or `name(args)`; known: {', '.join(table)}") from None
  call = node if isinstance(node, ast.Call) else None
  name_node = call.func if call else node
  if not isinstance(name_node, ast.Name):
    raise ValueError(f"{what} {text!r} is not `name` or `name(args)`; known: {', '.join(table)}")
  name = name_node.id
  if name not in table:
    raise ValueError(f"{what} {name!r} is unknown; known: {', '.join(table)}")
  try:
    args = tuple(ast.literal_eval(a) for a in call.args) if call else ()
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
  except ValueError:
    raise ValueError(f"{what} {text!r}: arguments must be Python literals") from None
  return name, args, kwargs


def build(spec: str, tokenizer: Any = None, max_len: int | None = None) -> Callable[[Example, np.random.Generator],
                                                                                     Example]:
  """Parses `spec` into `fn(example, rng) -> example` (image fields end as numpy arrays)."""
  ops = []
  for part in _split(spec):
    if not part:
      continue
    name, args, kwargs = parse_call(part, OPS, "pp op")
    try:
      inspect.signature(OPS[name]).bind(*args, **kwargs)
    except TypeError as e:
      raise ValueError(f"pp op {part!r} does not match {_signature(name)}: {e}") from None
    ops.append(OPS[name](*args, **kwargs))

  def run(example: Example, rng: np.random.Generator) -> Example:
    ctx = Context(rng, tokenizer, max_len)
    ex = dict(example)
    try:
      for op in ops:
        ex = op(ex, ctx)
      return {k: to_numpy(v) for k, v in ex.items()}
    except _IMAGE_ERRORS as e:  # decoding happens lazily, in whichever op first needs the pixels
      raise BadSample("bad_image", str(e) or type(e).__name__) from None
  return run
