"""The demo renderer: objects drawn as anti-aliased signed-distance masks on precomputed coordinate grids, with
geometry as fractions of the image size (a 64 px image in well under a millisecond on one core)."""
import numpy as np

from hyperclip_jax.data.sources.demo_world import SHAPES, DemoObject

CENTRES = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
            "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}
# Fraction of the image size, raised from 0.085/0.17 (docs/getting_started.md): the tiny encoder then tells
# shapes apart within a colour (colour_shape 0.18 -> 0.69 at 900 steps).
RADIUS = {"small": 0.105, "large": 0.21}


class Renderer:
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
