"""The demo world: the attributes a scene's objects have, the words captions use for them, and which (colour,
shape) pairs training shows. HELDOUT_PAIRS never appear in the training stream but make up the
`heldout_colour_shape` zero-shot task, which measures compositional generalisation.
"""
import dataclasses

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
