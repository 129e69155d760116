"""Tissue-label maps drawn in normalised patient coordinates.

Each pixel holds a tissue constant (how each modality shows it is in
modalities.py). `Canvas` draws shapes of tissue; `blob`, `mass` and `fracture`
are the shapes the findings share across body parts.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw

(
  AIR,
  SOFT,
  FAT,
  BONE,
  MARROW,
  FLUID,
  LUNG,
  GREY,
  WHITE,
  ORGAN,
  KIDNEY,
  BLOOD,
  MASS,
  GAS,
  DISC,
  FRACTURE,
  LIGAMENT,
  TABLE,
) = range(18)

# What a bone is drawn with: fractures cut through it, X-ray shows it sharp.
BONY = (BONE, MARROW, FRACTURE)


class Canvas:
  """A tissue-label map drawn in normalised patient coordinates.

  x runs from -1 (image left, the patient's right) to 1, y from -1 (top) to
  1; a random similarity transform (scale, rotation, shift, optional mirror)
  maps them to pixels of an n x n supersampled image. Later shapes paint over
  earlier ones; `within` restricts a shape to pixels of the given tissues.
  """

  def __init__(self, n: int, scale: float, angle: float, shift: tuple[float, float], mirror: bool):
    self.n = n
    self.scale = scale
    self._img = Image.new('L', (n, n), AIR)
    self._draw = ImageDraw.Draw(self._img)
    flip = -1.0 if mirror else 1.0
    c, s = math.cos(angle), math.sin(angle)
    # pixel = (flip * x, y) @ M + offset
    self._m = np.array([[flip, 0.0], [0.0, 1.0]]) @ np.array([[c, s], [-s, c]]) * (scale * n / 2)
    self._offset = (np.asarray(shift, float) + 1.0) * (n / 2)
    # Normalised coordinates of every pixel centre (inverse transform).
    p = (np.arange(n) + 0.5) / (n / 2) - 1.0
    px, py = np.meshgrid(p - shift[0], p - shift[1])
    u = (c * px + s * py) / scale
    v = (-s * px + c * py) / scale
    self.X = (u * flip).astype(np.float32)
    self.Y = v.astype(np.float32)

  @property
  def labels(self) -> np.ndarray:
    return np.array(self._img)

  def px(self, pts) -> list[float]:
    q = np.asarray(pts, float).reshape(-1, 2) @ self._m + self._offset
    return q.ravel().tolist()

  def width(self, w: float) -> int:
    return max(1, int(round(w * self.scale * self.n / 2)))

  def _new(self):
    img = Image.new('L', (self.n, self.n))
    return img, ImageDraw.Draw(img)

  def paint(self, tissue: int, mask: np.ndarray, within=None) -> None:
    lab = np.array(self._img)
    if within is not None:
      mask = mask & np.isin(lab, within)
    lab[mask] = tissue
    self._img = Image.fromarray(lab, 'L')
    self._draw = ImageDraw.Draw(self._img)

  def _shape(self, tissue, within, draw_fn) -> None:
    if within is None:
      draw_fn(self._draw, tissue)
      return
    img, d = self._new()
    draw_fn(d, 255)
    allowed = self._img.point(_membership_table(tuple(within)))
    self._img.paste(tissue, (0, 0, self.n, self.n), ImageChops.multiply(img, allowed))

  def _mask(self, draw_fn) -> np.ndarray:
    img, d = self._new()
    draw_fn(d, 1)
    return np.asarray(img, bool)

  def _poly_fn(self, pts):
    xy = self.px(pts)
    return lambda d, fill: d.polygon(xy, fill=fill)

  def _line_fn(self, pts, w, caps=False):
    xy, width = self.px(pts), self.width(w)

    def fn(d, fill):
      d.line(xy, fill=fill, width=width, joint='curve')
      if caps and width > 2:
        r = width / 2
        for x, y in (xy[:2], xy[-2:]):
          d.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    return fn

  def poly_mask(self, pts) -> np.ndarray:
    return self._mask(self._poly_fn(pts))

  def line_mask(self, pts, w: float) -> np.ndarray:
    return self._mask(self._line_fn(pts, w))

  def ellipse_mask(self, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    return self.poly_mask(_ellipse_pts(cx, cy, rx, ry, angle))

  def ellipse(self, tissue, cx, cy, rx, ry, angle=0.0, within=None):
    return self._shape(tissue, within, self._poly_fn(_ellipse_pts(cx, cy, rx, ry, angle)))

  def polygon(self, tissue, pts, within=None):
    return self._shape(tissue, within, self._poly_fn(pts))

  def line(self, tissue, pts, w, within=None):
    return self._shape(tissue, within, self._line_fn(pts, w))

  def rod(self, tissue, p0, p1, w, within=None):
    """A straight bar with rounded ends (a bone of a limb)."""
    return self._shape(tissue, within, self._line_fn([p0, p1], w, True))

  def bone(self, p0, p1, w, cortex=0.3):
    """A long bone: cortex around a marrow cavity."""
    self.rod(BONE, p0, p1, w)
    self.rod(MARROW, p0, p1, w * (1 - 2 * cortex))


@functools.lru_cache(maxsize=None)
def _membership_table(tissues: tuple[int, ...]) -> list[int]:
  return [255 if i in tissues else 0 for i in range(256)]


_CIRCLE = np.stack(
  [
    np.cos(np.linspace(0, 2 * np.pi, 40, endpoint=False)),
    np.sin(np.linspace(0, 2 * np.pi, 40, endpoint=False)),
  ],
  1,
)


def _ellipse_pts(cx, cy, rx, ry, angle=0.0):
  c, s = math.cos(angle), math.sin(angle)
  m = np.array([[rx * c, rx * s], [-ry * s, ry * c]])
  return _CIRCLE @ m + (cx, cy)


def arc(cx, cy, rx, ry, a0, a1, n=10):
  t = np.radians(np.linspace(a0, a1, n))
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def blob(c: Canvas, tissue, cx, cy, r, rng, within=None, k=5):
  """An irregular lump: a few overlapping ellipses (a clot, a contusion)."""
  m = c.ellipse_mask(cx, cy, r * 0.7, r * 0.6, rng.uniform(0, np.pi))
  for _ in range(k - 1):
    a = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(0.2, 0.6) * r
    m |= c.ellipse_mask(
      cx + d * math.cos(a),
      cy + d * math.sin(a),
      r * rng.uniform(0.3, 0.55),
      r * rng.uniform(0.3, 0.5),
      rng.uniform(0, np.pi),
    )
  c.paint(tissue, m, within)


def mass(c: Canvas, cx, cy, r, rng, within=None):
  c.ellipse(
    MASS,
    cx,
    cy,
    r * rng.uniform(0.9, 1.1),
    r * rng.uniform(0.8, 1.0),
    rng.uniform(0, np.pi),
    within,
  )


def fracture(c: Canvas, p0, p1, swelling=None, rng=None):
  """A fracture line through bone, with optional soft-tissue swelling."""
  if swelling is not None:
    x, y, r = swelling
    c.ellipse(SOFT, x, y, r, r * 0.7, rng.uniform(0, np.pi), within=(AIR, FAT))
  c.line(FRACTURE, [p0, p1], 0.06, within=BONY)
