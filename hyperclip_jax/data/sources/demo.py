"""Procedural demo data: coloured shapes with captions, rendered on the fly (no files, no network).

Every sample is a pure function of (seed, stream, index), so a stream can resume at any index and a
data-parallel host can render exactly its own slice. A scene holds one object (sometimes two) with a colour,
shape, size, position and texture; its caption comes from a small grammar with word-order, article and
synonym variants. A fixed list of (colour, shape) pairs, HELDOUT_PAIRS, never appears in the training stream
but makes up the `heldout_colour_shape` zero-shot task, which measures compositional generalisation.

Geometry is expressed as fractions of the image size and drawn as anti-aliased signed-distance masks on
precomputed coordinate grids, which renders a 64 px image in well under a millisecond on one core.
"""
import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 55, 200),
    "orange": (250, 140, 25),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
TEXTURES = ("solid", "striped", "outlined")
ATTRIBUTES = ("colour", "shape", "size", "position", "texture")
# What a contrast-set variant changes, by default (repeats weigh more: shape and texture twice as often).
CONTRAST_ATTRIBUTES = ("shape", "shape", "texture", "texture", "colour", "size", "position")

# Never rendered in training; each colour at most once, so every colour and shape still trains elsewhere.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"), ("green", "triangle"), ("blue", "cross"), ("yellow", "diamond"),
    ("purple", "circle"), ("orange", "square"), ("cyan", "star"))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_PAIRS)

# Words a caption may use for each attribute value (the first one is the canonical class name).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {c: (c,) for c in COLOURS},
    "shape": {s: (s,) for s in SHAPES},
    "size": {"small": ("small", "little"), "large": ("large", "big")},
    "position": {
        "top left": ("at the top left", "in the top left corner", "in the upper left"),
        "top right": ("at the top right", "in the top right corner", "in the upper right"),
        "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
        "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
        "center": ("in the center", "in the middle", "at the center"),
    },
    "texture": {"solid": ("solid",), "striped": ("striped",), "outlined": ("outlined", "hollow")},
}
_PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "there is ")
_GENERIC_NOUNS = ("shape", "object")
_CENTRES = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
            "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}
# Fraction of the image size, raised from 0.085/0.17 (docs/getting_started.md): the tiny encoder then tells
# shapes apart within a colour (colour_shape 0.18 -> 0.69 at 900 steps).
_RADIUS = {"small": 0.105, "large": 0.21}
_TRAIN_STREAM = 0
_DEFAULT_EVAL_SEED = 12345


@dataclasses.dataclass(frozen=True)
class DemoObject:
  """One drawn object: its attribute values and which of them its caption mentions."""
  colour: str
  shape: str
  size: str
  position: str
  texture: str
  mentioned: tuple[str, ...] = ATTRIBUTES


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[DemoObject, ...]
  caption: str


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """A zero-shot classification task: prompts come from class names x templates; sample_fn(i) gives the
  i-th eval example as (image uint8 [H, W, 3], label int) for i in range(n_eval), deterministically."""
  name: str
  class_names: tuple[str, ...]
  templates: tuple[str, ...]
  sample_fn: Callable[[int], tuple[np.ndarray, int]]
  n_eval: int

  def prompts(self) -> list[list[str]]:
    """[num_classes][num_templates] prompt strings."""
    return [[t.format(c) for t in self.templates] for c in self.class_names]


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


class _Renderer:
  """Draws scenes at one resolution; coordinate grids and a noise bank are precomputed once."""

  def __init__(self, image_size: int):
    if not isinstance(image_size, int) or image_size < 16:
      raise ValueError(f"demo image_size={image_size!r} is too small; use an int >= 16 (default 64)")
    s = image_size
    self.size = s
    self.coords = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
    self.stripe_period = max(3.0, 0.09 * s)
    # Mild noise as a random window of a fixed bank: as varied as needed, far cheaper than fresh normals.
    self.noise = np.random.default_rng(0).normal(0.0, 5.0, (2 * s, 2 * s, 3)).astype(np.float32)

  def sdf(self, shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) of `shape` with nominal radius r, centred at 0."""
    if shape == "circle":
      return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
      return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
      return (np.abs(dx) + np.abs(dy) - 1.2 * r) * np.float32(0.7071)
    if shape == "triangle":  # pointing up, bounding box centred
      rt = 1.35 * r
      return _triangle(dx, dy - 0.25 * rt, rt, up=True)
    if shape == "star":  # hexagram: union of an up and a down triangle
      rs = 1.2 * r
      return np.minimum(_triangle(dx, dy, rs, up=True), _triangle(dx, dy, rs, up=False))
    if shape == "cross":
      w = 0.36 * r
      ax, ay = np.abs(dx), np.abs(dy)
      return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    raise ValueError(f"demo shape {shape!r} is unknown; known: {', '.join(SHAPES)}")

  def draw(self, img: np.ndarray, obj: DemoObject, cx: float, cy: float, r: float,
           rgb: np.ndarray) -> None:
    """Alpha-blends one object into img [S, S, 3] float32 in place."""
    s, ext = self.size, 1.5 * r + 2.0
    x0, x1 = max(0, int(cx - ext)), min(s, int(cx + ext) + 1)
    y0, y1 = max(0, int(cy - ext)), min(s, int(cy + ext) + 1)
    dx = self.coords[None, x0:x1] - np.float32(cx)  # [1, w]
    dy = self.coords[y0:y1, None] - np.float32(cy)  # [h, 1]
    d = self.sdf(obj.shape, dx, dy, r)  # [h, w]
    if obj.texture == "outlined":
      half = 0.5 * max(1.5, 0.25 * r)
      alpha = np.clip(0.5 + half - np.abs(d + half), 0.0, 1.0)
    else:
      alpha = np.clip(0.5 - d, 0.0, 1.0)
      if obj.texture == "striped":  # faint gaps between the stripes keep small silhouettes readable
        period = min(self.stripe_period, max(3.0, 0.6 * r))
        phase = (dx + dy) * np.float32(1.0 / period)
        alpha = alpha * np.where((phase - np.floor(phase)) < 0.5, np.float32(1.0), np.float32(0.3))
    region = img[y0:y1, x0:x1]
    region += alpha[..., None] * (rgb - region)


def _triangle(dx: np.ndarray, dy: np.ndarray, rt: float, up: bool) -> np.ndarray:
  """Equilateral triangle with circumradius rt, centroid at 0 (y points down): max of 3 half-planes."""
  sign = 1.0 if up else -1.0
  c, h = np.float32(0.8660), np.float32(0.5)
  e1 = sign * dy  # bottom edge (top edge when pointing down)
  e2 = c * dx - h * sign * dy
  e3 = -c * dx - h * sign * dy
  return np.maximum(np.maximum(e1, e2), e3) - 0.5 * rt


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
    self.renderer = _Renderer(image_size)
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
                       f"{_RADIUS['small']}/{_RADIUS['large']} of the image size)")
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
      fx, fy = _CENTRES[obj.position]
      cx, cy = (fx + 0.08 * (v[0] - 0.5)) * s, (fy + 0.08 * (v[1] - 0.5)) * s
      r = _RADIUS[obj.size] * self.object_scale * s * (0.9 + 0.2 * v[2])
      rgb = np.asarray(COLOURS[obj.colour], np.float32) + 20.0 * (v[3:6] - 0.5)
      self.renderer.draw(img, obj, cx, cy, r, rgb)
    oy, ox = int(u[4] * s), int(u[5] * s)
    noise = self.renderer.noise[oy:oy + s, ox:ox + s]
    img += noise if u[6] < 0.5 else -noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)

  def _caption(self, rng: np.random.Generator, objects: Sequence[DemoObject]) -> str:
    if len(objects) == 1:
      prefix, phrase = _pick(rng, _PREFIXES), _phrase(rng, objects[0], True, self.solid_named_prob)
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
  noun = word.get("shape") or _pick(rng, _GENERIC_NOUNS)
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


class DemoTaskSampler:
  """sample_fn of a demo zero-shot task: example i pins attribute `attribute` to class i % num_classes
  (balanced classes), all else random; a single object per image so the label is unambiguous."""

  def __init__(self, source: DemoSource, attribute: str, class_names: Sequence[str],
               pinned: tuple[tuple[str, str], ...] = ()):
    self.source, self.attribute, self.class_names = source, attribute, tuple(class_names)
    self.pinned = dict(pinned)  # attributes fixed for every example, e.g. size=large

  def _fixed(self, label: int) -> dict:
    name = self.class_names[label]
    if self.attribute == "colour_shape":
      colour, shape = name.split(" ")
      return {**self.pinned, "colour": colour, "shape": shape}
    if self.attribute == "size_position":
      return dict(SIZE_POSITION_CLASSES[name])
    return {**self.pinned, self.attribute: name}

  def sample(self, index: int) -> tuple[np.ndarray, Scene, int]:
    label = index % len(self.class_names)
    image, scene = self.source.sample(index, **self._fixed(label))
    return image, scene, label

  def __call__(self, index: int) -> tuple[np.ndarray, int]:
    image, _, label = self.sample(index)
    return image, label


_TEMPLATES = {
    "colour": ("the {} shape.", "a photo of the {} object.", "something {}.", "one {} object."),
    "shape": ("a photo of a {}.", "a {}.", "the {} shape.", "an image of one {}."),
    "colour_shape": ("the {}.", "a photo of the {}.", "one {}.", "an image with one {}."),
    "size": ("a {} shape.", "a photo of a {} object.", "the {} thing.", "one {} object."),
    "position": ("a shape at the {}.", "an object in the {}.", "a photo of something at the {}.",
                 "one thing in the {}."),
    "texture": ("the {} shape.", "one {} object.", "a photo of something {}."),
    "size_position": ("a {}.", "a photo of a {}.", "one {}.", "an image of a {}."),
}

# "large shape at the top left" -> {size, position}: a 10-class compositional task. (A plain 2-class size
# task cannot show "twice chance", so size is evaluated together with position.)
SIZE_POSITION_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    f"{size} shape {SYNONYMS['position'][pos][0]}": (("size", size), ("position", pos))
    for size in SIZES for pos in POSITIONS}


DEMO_TASK_NAMES = ("colour", "shape", "colour_shape", "position", "size_position", "texture", "heldout_colour_shape")


def demo_tasks(image_size: int = 64, n_eval: int = 512, seed: int = _DEFAULT_EVAL_SEED,
               object_scale: float = 1.0) -> dict[str, ZeroShotTask]:
  """The demo zero-shot tasks, keyed by name. Their label-set sizes all differ (8, 6, 41, 5, 10, 3, 7).

  Eval examples come from streams disjoint from training (stream ids >= 1) and, by default, another seed.
  `heldout_colour_shape` uses only HELDOUT_PAIRS, which training never shows. `object_scale` must be the
  training source's (config.data.object_scale).
  """
  if n_eval < 1:
    raise ValueError(f"demo_tasks n_eval={n_eval} must be >= 1")
  specs = (  # name, attribute, class names, pairs the images draw from
      ("colour", "colour", tuple(COLOURS), SEEN_PAIRS),
      ("shape", "shape", SHAPES, SEEN_PAIRS),
      ("colour_shape", "colour_shape", tuple(f"{c} {s}" for c, s in SEEN_PAIRS), SEEN_PAIRS),
      ("position", "position", POSITIONS, SEEN_PAIRS),
      ("size_position", "size_position", tuple(SIZE_POSITION_CLASSES), SEEN_PAIRS),
      ("texture", "texture", TEXTURES, SEEN_PAIRS),
      ("heldout_colour_shape", "colour_shape", tuple(f"{c} {s}" for c, s in HELDOUT_PAIRS), HELDOUT_PAIRS),
  )
  assert tuple(name for name, *_ in specs) == DEMO_TASK_NAMES
  tasks = {}
  for stream, (name, attribute, classes, pairs) in enumerate(specs, start=1):
    source = DemoSource(image_size, seed, two_objects_prob=0.0, partial_caption_prob=0.0,
                        stream=stream, pairs=pairs, object_scale=object_scale)
    # Shape and texture are judged on large objects: a small one is ~13 px across at 64 px, where star points
    # and stripes are 1-2 px. Training shows both sizes.
    pinned = (("size", "large"),) if attribute in ("shape", "texture", "colour_shape") else ()
    sampler = DemoTaskSampler(source, attribute, classes, pinned)
    tasks[name] = ZeroShotTask(name, tuple(classes), _TEMPLATES[attribute], sampler, n_eval)
  return tasks


def vocabulary() -> tuple[str, ...]:
  """Every word the demo grammar, its task class names and templates can produce (sorted, deterministic)."""
  phrases = [w for values in SYNONYMS.values() for words in values.values() for w in words]
  phrases += list(_PREFIXES) + list(_GENERIC_NOUNS) + ["a an one the and two shapes photo of in at , :"]
  phrases += [t for templates in _TEMPLATES.values() for t in templates]
  phrases += list(SIZE_POSITION_CLASSES) + list(POSITIONS)
  return tuple(sorted({w for p in phrases for w in re.findall(r"[^\W\d_]+|[^\s{}]", p.lower())}))
