"""The demo training source: every sample is a pure function of (seed, stream, index), so a stream can resume
at any index and a data-parallel host can render exactly its own slice. A scene holds one object (sometimes
two); its caption comes from a small grammar with word-order, article and synonym variants.
"""
import dataclasses
import re
from typing import Sequence

import numpy as np

from hyperclip_jax.data.sources import demo_render
from hyperclip_jax.data.sources.demo_world import (
    ATTRIBUTES,
    COLOURS,
    CONTRAST_ATTRIBUTES,
    POSITIONS,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    SYNONYMS,
    TEXTURES,
    DemoObject,
    Scene,
)

PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "there is ")
GENERIC_NOUNS = ("shape", "object")
_TRAIN_STREAM = 0
DEFAULT_EVAL_SEED = 12345


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


class DemoSource:
  """Random-access, effectively infinite source of {'image': uint8 [S, S, 3], 'caption': str}.

  `stream` separates independent streams under one seed (0 is training; zero-shot tasks use others).
  `pairs` are the (colour, shape) pairs drawn from; by default the training pairs (HELDOUT_PAIRS excluded).
  """

  def __init__(self, image_size: int = 64, seed: int = 0, two_objects_prob: float = 0.3,
               partial_caption_prob: float = 0.2, stream: int = _TRAIN_STREAM,
               pairs: Sequence[tuple[str, str]] = SEEN_PAIRS, contrast_prob: float = 0.0,
               contrast_group: int = 2, object_scale: float = 1.0,
               contrast_attributes: Sequence[str] = CONTRAST_ATTRIBUTES, solid_named_prob: float = 0.4):
    for name, p in (("two_objects_prob", two_objects_prob), ("partial_caption_prob", partial_caption_prob),
                    ("contrast_prob", contrast_prob), ("solid_named_prob", solid_named_prob)):
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"demo {name}={p} must be a probability in [0, 1]")
    if seed < 0 or stream < 0:
      raise ValueError(f"demo seed={seed} and stream={stream} must be non-negative ints")
    self.renderer = demo_render.Renderer(image_size)
    self.image_size = image_size
    self.seed, self.stream = int(seed), int(stream)
    self.two_objects_prob = two_objects_prob
    self.partial_caption_prob = partial_caption_prob
    self.solid_named_prob = float(solid_named_prob)
    self.pairs = tuple(pairs)
    if not isinstance(contrast_group, int) or contrast_group < 2:
      raise ValueError(f"demo contrast_group={contrast_group!r} must be an int >= 2 (scenes per contrast set)")
    self.contrast_prob, self.contrast_group = contrast_prob, contrast_group
    unknown = [a for a in contrast_attributes if a not in ATTRIBUTES]
    if not contrast_attributes or isinstance(contrast_attributes, str) or unknown:
      raise ValueError(f"demo contrast_attributes={contrast_attributes!r} must be a non-empty tuple of names from "
                       f"{ATTRIBUTES} (a name given twice is changed twice as often)")
    self.contrast_attributes = tuple(contrast_attributes)
    if not 0.5 <= object_scale <= 1.5:  # above ~1.0 large stars and triangles at the corners touch the border
      raise ValueError(f"demo object_scale={object_scale!r} must be in [0.5, 1.5] (1.0: the default radii "
                       f"{demo_render.RADIUS['small']}/{demo_render.RADIUS['large']} of the image size)")
    self.object_scale = float(object_scale)

  def __len__(self) -> int:
    return 2**62  # infinite in practice; grain needs a length

  def __getitem__(self, index: int) -> dict:
    image, scene = self.sample(index)
    return {"image": image, "caption": scene.caption}

  def rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng((self.seed, self.stream, int(index)))

  def sample(self, index: int, **fixed: str) -> tuple[np.ndarray, Scene]:
    """The index-th image and its scene. `fixed` pins attributes of a single object (eval tasks)."""
    rng = self.rng(index)
    objects = self._scene_objects(rng, fixed)
    base = index - index % self.contrast_group
    if (self.contrast_prob and not fixed and index != base and len(objects) == 1
        and rng.random() < self.contrast_prob):  # (no draw at all when off: the stream is unchanged)
      base_objects = self._scene_objects(self.rng(base), {})
      if len(base_objects) == 1:
        objects = (self._contrast(rng, base_objects[0]),)
    caption = self._caption(rng, objects)
    return self._render(rng, objects), Scene(objects, caption)

  def _scene_objects(self, rng: np.random.Generator, fixed: dict) -> tuple[DemoObject, ...]:
    two = not fixed and rng.random() < self.two_objects_prob
    return self._draw_objects(rng, two, fixed)

  def _contrast(self, rng: np.random.Generator, base: DemoObject) -> DemoObject:
    """base with one attribute changed, drawn from `contrast_attributes` (repeats weigh more), and named.

    Stream positions come in contrast sets of `contrast_group` consecutive scenes: the first is drawn as usual,
    each other one is (with probability contrast_prob) a variant of it with one attribute changed. A batch then
    holds captions that differ in one or two attributes: in-batch negatives that only shape or texture tell
    apart, a signal random batches almost never give (there, colour, position and size separate nearly every
    negative, and a contrastive model learns those first and shape not at all: feature suppression).
    """
    for _ in range(16):  # the changed (colour, shape) pair must be one this source draws from
      attr = _pick(rng, self.contrast_attributes)
      current = getattr(base, attr)
      values = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS,
                "texture": TEXTURES}[attr]
      value = _pick(rng, [v for v in values if v != current])
      changed = dataclasses.replace(base, **{attr: value})
      if (changed.colour, changed.shape) in self.pairs:
        mentioned = tuple(a for a in ATTRIBUTES if a in base.mentioned or a == attr)
        return dataclasses.replace(changed, mentioned=mentioned)
    return base

  def _draw_objects(self, rng: np.random.Generator, two: bool, fixed: dict) -> tuple[DemoObject, ...]:
    if two:  # two distinct corners, so the objects never overlap
      positions = [POSITIONS[i] for i in rng.permutation(4)[:2]]
    else:
      positions = [fixed.get("position") or _pick(rng, POSITIONS)]
    pairs = [p for p in self.pairs
             if fixed.get("colour", p[0]) == p[0] and fixed.get("shape", p[1]) == p[1]]
    if not pairs:
      raise ValueError(f"demo attributes {fixed} leave no (colour, shape) pair among {len(self.pairs)}")
    objects = []
    for position in positions:
      colour, shape = pairs[int(rng.integers(len(pairs)))]
      size = fixed.get("size") or _pick(rng, SIZES)
      texture = fixed.get("texture") or _pick(rng, TEXTURES)
      mentioned = ATTRIBUTES
      if not two and rng.random() < self.partial_caption_prob:
        keep = rng.random(len(ATTRIBUTES)) < 0.5
        keep[int(rng.integers(len(ATTRIBUTES)))] = True
        mentioned = tuple(a for a, k in zip(ATTRIBUTES, keep) if k)
      objects.append(DemoObject(colour, shape, size, position, texture, mentioned))
    return tuple(objects)

  def _render(self, rng: np.random.Generator, objects: Sequence[DemoObject]) -> np.ndarray:
    s = self.image_size
    u = rng.random(8 + 6 * len(objects)).astype(np.float32)  # all per-image randomness in one draw
    grey = 60.0 + 70.0 * u[0]
    img = np.empty((s, s, 3), np.float32)
    img[:] = grey + 16.0 * (u[1:4] - 0.5)  # tinted grey background
    for k, obj in enumerate(objects):
      v = u[8 + 6 * k: 14 + 6 * k]
      fx, fy = demo_render.CENTRES[obj.position]
      cx, cy = (fx + 0.08 * (v[0] - 0.5)) * s, (fy + 0.08 * (v[1] - 0.5)) * s
      r = demo_render.RADIUS[obj.size] * self.object_scale * s * (0.9 + 0.2 * v[2])
      rgb = np.asarray(COLOURS[obj.colour], np.float32) + 20.0 * (v[3:6] - 0.5)
      self.renderer.draw(img, obj, cx, cy, r, rgb)
    oy, ox = int(u[4] * s), int(u[5] * s)
    noise = self.renderer.noise[oy:oy + s, ox:ox + s]
    img += noise if u[6] < 0.5 else -noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)

  def _caption(self, rng: np.random.Generator, objects: Sequence[DemoObject]) -> str:
    if len(objects) == 1:
      prefix, phrase = _pick(rng, PREFIXES), _phrase(rng, objects[0], True, self.solid_named_prob)
      if phrase.startswith(("in ", "at ")):
        prefix = ""  # "in the middle, a red circle" takes no "a photo of"
      return prefix + phrase + _pick(rng, ("", "."))
    a, b = (_phrase(rng, o, False, self.solid_named_prob) for o in objects)
    form = int(rng.integers(4))
    text = (f"{a} and {b}", f"two shapes: {a} and {b}", f"a photo of {a} and {b}", f"{a}, {b}")[form]
    return text + _pick(rng, ("", "."))


def _phrase(rng: np.random.Generator, obj: DemoObject, allow_reorder: bool, solid_named_prob: float) -> str:
  """Noun phrase for one object that names exactly its `mentioned` attributes (a solid texture only with
  probability solid_named_prob: it is the unmarked case)."""
  word = {a: _pick(rng, SYNONYMS[a][getattr(obj, a)]) for a in obj.mentioned}
  if "texture" in word and obj.texture == "solid" and rng.random() < 1.0 - solid_named_prob:
    word["texture"] = ""
  noun = word.get("shape") or _pick(rng, GENERIC_NOUNS)
  pos = word.get("position", "")
  det = _pick(rng, ("a", "a", "one", "the"))
  form = int(rng.integers(3)) if allow_reorder else 0
  if form == 2 and "colour" in word:  # "a small striped circle in red at the top left"
    adjs = " ".join(w for w in (word.get("size"), word.get("texture")) if w)
    body = f"{adjs} {noun} in {word['colour']}".strip()
  else:
    adjs = " ".join(w for w in (word.get("size"), word.get("colour"), word.get("texture")) if w)
    body = f"{adjs} {noun}".strip()
  if det == "a":
    det = _article(body)
  if form == 1 and pos:  # "in the top left corner, a large blue square"
    return f"{pos}, {det} {body}"
  return f"{det} {body} {pos}".strip()


def caption_mentions(caption: str, attribute: str, value: str) -> bool:
  """Whether `caption` names `value` of `attribute` with one of its SYNONYMS (whole words)."""
  return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in SYNONYMS[attribute][value])
