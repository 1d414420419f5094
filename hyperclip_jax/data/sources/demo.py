"""Procedural demo data: coloured shapes with captions, rendered on the fly (no files, no network).

Every sample is a pure function of (seed, stream, index), so a stream can resume at any index and a
data-parallel host can render exactly its own slice. A scene holds one object (sometimes two) with a colour,
shape, size, position and texture; its caption comes from a small grammar with word-order, article and
synonym variants. A fixed list of (colour, shape) pairs, HELDOUT_PAIRS, never appears in the training stream
but makes up the `heldout_colour_shape` zero-shot task, which measures compositional generalisation.

Geometry is expressed as fractions of the image size and drawn as anti-aliased signed-distance masks on
precomputed coordinate grids, which renders a 64 px image in well under a millisecond on one core.

This module is the demo data's public face; the parts live in demo_world.py (attributes, words, pairs),
demo_render.py (drawing), demo_source.py (the training source and its caption grammar) and demo_eval.py (the
zero-shot tasks and the vocabulary).
"""
from hyperclip_jax.data.sources.demo_eval import (
    DEMO_TASK_NAMES,
    SIZE_POSITION_CLASSES,
    TEMPLATES,
    DemoTaskSampler,
    ZeroShotTask,
    demo_tasks,
    vocabulary,
)
from hyperclip_jax.data.sources.demo_render import Renderer
from hyperclip_jax.data.sources.demo_source import DemoSource, caption_mentions
from hyperclip_jax.data.sources.demo_world import (
    ATTRIBUTES,
    COLOURS,
    CONTRAST_ATTRIBUTES,
    HELDOUT_PAIRS,
    POSITIONS,
    SEEN_PAIRS,
    SHAPES,
    SIZES,
    SYNONYMS,
    TEXTURES,
    DemoObject,
    Scene,
)

__all__ = ["ATTRIBUTES", "COLOURS", "CONTRAST_ATTRIBUTES", "DEMO_TASK_NAMES", "HELDOUT_PAIRS", "POSITIONS",
           "SEEN_PAIRS", "SHAPES", "SIZES", "SIZE_POSITION_CLASSES", "SYNONYMS", "TEMPLATES", "TEXTURES", "DemoObject",
           "DemoSource", "DemoTaskSampler", "Renderer", "Scene", "ZeroShotTask", "caption_mentions", "demo_tasks",
           "vocabulary"]
