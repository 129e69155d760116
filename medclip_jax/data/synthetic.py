"""Synthetic radiology image-caption pairs: the demo dataset.

Each example is a small grayscale image of a body part as seen by one imaging
modality, with a finding drawn in, and a radiology-style caption naming the
modality, the body part, the finding, its side and its place.

Labels (see `LABELS`): modality, body_part, finding and laterality. Every
combination of modality, body part and finding can be drawn. Laterality is
'none' for normal studies and for the lumbar spine (drawn in sagittal
section, where all findings are midline), otherwise 'left' or 'right'.

Convention (radiological): images are displayed as if facing the patient, so
the patient's RIGHT is on the IMAGE LEFT. Cross-sections are viewed from the
feet with anterior at the top; frontal projections have the patient's head
at the top; the sagittal lumbar spine has anterior on the image left. For the
knee and the hand, laterality is the limb: a right knee has its fibula on the
image left and a right hand its thumb on the image left (anatomical
position); a left limb is the mirror image. A normal knee or hand is drawn as
either limb.

Views: axial sections of the brain, chest, abdomen and pelvis, a sagittal
lumbar spine, and coronal / frontal knee and hand; X-ray shows projections
instead (PA skull, PA chest, supine abdomen, AP pelvis; lateral spine, AP knee,
PA hand).

What each modality looks like:
  CT: bright bone, mid-grey soft tissue, darker fat and fluid, black air and
    lung, sharp edges, fine noise, the table under axial sections.
  MRI: T2-like contrast: bright fluid, fat and discs, dark cortical bone and
    air; smooth, with a coil bias field and Rician background noise.
  X-ray: bright sharp bones, soft tissue only as blurred thickness (lungs and
    bowel gas dark), no fine soft-tissue detail, black outside the body.
  Ultrasound: a fan-shaped sector on black, closer in, with speckle, anechoic
    (black) fluid, hypoechoic masses, and bright bone and gas surfaces that
    cast acoustic shadows along the beam; cranial ultrasound looks in through
    the fontanelle, the spine and knee are scanned from the back / side.

Findings: mass = round lesion (bright on CT/MRI, hypoechoic on ultrasound,
lytic in bone); fracture = dark (MRI: bright oedema) line through a bone,
often with soft-tissue swelling; effusion = fluid layer or collection with a flat or
crescentic edge in a body cavity or joint; hemorrhage = irregular clot, or a
crescent over the brain (bright on CT, dark on MRI, echogenic on ultrasound).

Everything is deterministic: example `i` of split `s` is drawn from
`numpy.random.default_rng([seed, crc32(s), i])`, independent of the order of
generation, and the images are encoded as PNG with fixed settings, so a seed
gives byte-identical files (with the same numpy, Pillow and zlib versions).
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw

MODALITIES = ('CT', 'MRI', 'X-ray', 'ultrasound')
BODY_PARTS = ('brain', 'chest', 'abdomen', 'pelvis', 'spine', 'knee', 'hand')
FINDINGS = ('normal', 'mass', 'fracture', 'effusion', 'hemorrhage')
LATERALITIES = ('left', 'right', 'none')

LABELS: dict[str, list[str]] = {
  'modality': sorted(MODALITIES),
  'body_part': sorted(BODY_PARTS),
  'finding': sorted(FINDINGS),
  'laterality': sorted(LATERALITIES),
}

# Body parts whose findings are all midline (laterality 'none').
MIDLINE_BODY_PARTS = ('spine',)
# Body parts where laterality means which limb is imaged.
LIMB_BODY_PARTS = ('knee', 'hand')

# Words the captions use for each label value (whole words, any case).
MODALITY_SYNONYMS = {
  'CT': ('CT', 'computed tomography', 'CT scan'),
  'MRI': ('MRI', 'MR', 'magnetic resonance imaging', 'MR imaging'),
  'X-ray': ('X-ray', 'radiograph', 'plain film', 'radiography'),
  'ultrasound': ('ultrasound', 'sonography', 'US', 'sonogram'),
}
BODY_PART_SYNONYMS = {
  'brain': ('brain', 'head', 'skull'),
  'chest': ('chest', 'thorax'),
  'abdomen': ('abdomen', 'abdominal'),
  'pelvis': ('pelvis', 'pelvic'),
  'spine': ('lumbar spine', 'L-spine'),
  'knee': ('knee',),
  'hand': ('hand',),
}
FINDING_SYNONYMS = {
  'normal': ('normal', 'abnormality', 'unremarkable'),
  'mass': ('mass', 'lesion', 'tumor'),
  'fracture': ('fracture',),
  'effusion': ('effusion', 'fluid'),
  'hemorrhage': ('hemorrhage', 'hematoma', 'bleed'),
}

# ---------------------------------------------------------------------------
# Tissues and how each modality shows them.

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

_LUT = {
  #              AIR  SOFT FAT  BONE MARR FLUI LUNG GREY WHIT ORGN KIDN BLOO MASS GAS  DISC FRAC LIGA TABL
  'CT': [
    0.0,
    0.42,
    0.24,
    1.0,
    0.88,
    0.31,
    0.05,
    0.55,
    0.47,
    0.55,
    0.63,
    0.80,
    0.68,
    0.02,
    0.48,
    0.34,
    0.45,
    0.55,
  ],
  'MRI': [
    0.0,
    0.30,
    0.78,
    0.04,
    0.62,
    0.97,
    0.04,
    0.52,
    0.36,
    0.36,
    0.52,
    0.16,
    0.74,
    0.02,
    0.80,
    0.92,
    0.06,
    0.0,
  ],
  'X-ray': [
    0.0,
    0.50,
    0.42,
    1.0,
    0.65,
    0.55,
    0.07,
    0.50,
    0.50,
    0.55,
    0.55,
    0.64,
    0.76,
    0.05,
    0.45,
    0.30,
    0.50,
    0.0,
  ],
  'ultrasound': [
    0.0,
    0.42,
    0.62,
    1.0,
    0.05,
    0.02,
    0.55,
    0.36,
    0.44,
    0.50,
    0.34,
    0.72,
    0.20,
    0.85,
    0.34,
    0.08,
    0.62,
    0.0,
  ],
}
_LUT = {k: np.asarray(v, np.float32) for k, v in _LUT.items()}
_BONY = (BONE, MARROW, FRACTURE)

# ---------------------------------------------------------------------------
# Drawing in normalised coordinates.


class _Canvas:
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


def _arc(cx, cy, rx, ry, a0, a1, n=10):
  t = np.radians(np.linspace(a0, a1, n))
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _blob(c: _Canvas, tissue, cx, cy, r, rng, within=None, k=5):
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


def _mass(c: _Canvas, cx, cy, r, rng, within=None):
  c.ellipse(
    MASS,
    cx,
    cy,
    r * rng.uniform(0.9, 1.1),
    r * rng.uniform(0.8, 1.0),
    rng.uniform(0, np.pi),
    within,
  )


def _fracture(c: _Canvas, p0, p1, swelling=None, rng=None):
  """A fracture line through bone, with optional soft-tissue swelling."""
  if swelling is not None:
    x, y, r = swelling
    c.ellipse(SOFT, x, y, r, r * 0.7, rng.uniform(0, np.pi), within=(AIR, FAT))
  c.line(FRACTURE, [p0, p1], 0.06, within=_BONY)


# ---------------------------------------------------------------------------
# Anatomy. Each function draws one body part in one view on the canvas, with
# the finding on side `sx` (-1: patient's right = image left, +1: left), and
# returns the place of the finding (a key of _PLACE_PHRASES) or None.


def _brain_axial(c, rng, finding, sx):
  rx, ry = rng.uniform(0.66, 0.74), rng.uniform(0.84, 0.9)
  c.ellipse(SOFT, 0, 0, rx + 0.1, ry + 0.1)  # scalp
  c.ellipse(FAT, 0, 0, rx + 0.07, ry + 0.07)
  c.ellipse(BONE, 0, 0, rx + 0.04, ry + 0.04)  # skull
  c.ellipse(MARROW, 0, 0, rx + 0.015, ry + 0.015)  # diploe
  c.ellipse(BONE, 0, 0, rx - 0.005, ry - 0.005)
  c.ellipse(FLUID, 0, 0, rx - 0.03, ry - 0.03)  # CSF
  c.ellipse(GREY, 0, 0, rx - 0.055, ry - 0.055)  # cortex
  t = np.linspace(0, 2 * np.pi, 72, endpoint=False)  # gyri
  wobble = (
    1.0 + 0.07 * np.sin(11 * t + rng.uniform(0, 6)) + 0.04 * np.sin(17 * t + rng.uniform(0, 6))
  )
  c.polygon(
    WHITE, np.stack([(rx - 0.2) * wobble * np.cos(t), 0.02 + (ry - 0.22) * wobble * np.sin(t)], 1)
  )
  c.line(FLUID, [(0, -ry), (0, -0.3)], 0.03)  # falx
  c.line(FLUID, [(0, 0.4), (0, ry)], 0.03)
  v = rng.uniform(0.8, 1.25)  # ventricles
  for s in (-1, 1):
    c.ellipse(FLUID, s * 0.1 * v, -0.18, 0.075 * v, 0.2, s * 0.3)
    c.ellipse(FLUID, s * 0.13 * v, 0.22, 0.06 * v, 0.15, -s * 0.4)
  c.ellipse(FLUID, 0, 0.03, 0.02, 0.07)
  brain = (GREY, WHITE, FLUID)
  if finding == 'mass':
    place = _pick(rng, ['frontal lobe', 'parietal lobe', 'temporal lobe', 'occipital lobe'])
    x, y = {
      'frontal lobe': (0.28, -0.5),
      'parietal lobe': (0.38, 0.15),
      'temporal lobe': (0.45, -0.1),
      'occipital lobe': (0.25, 0.6),
    }[place]
    r = rng.uniform(0.13, 0.19)
    c.ellipse(
      FLUID,
      sx * x,
      y,
      r * 1.5,
      r * 1.4,  # oedema
      within=(GREY, WHITE),
    )
    _mass(c, sx * x, y, r, rng, within=brain)
    return place
  if finding == 'fracture':
    place = _pick(rng, ['frontal bone', 'parietal bone', 'occipital bone'])
    a = {'frontal bone': -65, 'parietal bone': rng.uniform(-15, 15), 'occipital bone': 65}[place]
    t = math.radians(a)
    ux, uy = math.cos(t), math.sin(t)
    p0 = (sx * (rx - 0.1) * ux, (ry - 0.1) * uy)
    p1 = (sx * (rx + 0.12) * ux, (ry + 0.12) * uy + 0.07)
    _fracture(c, p0, p1)
    c.ellipse(SOFT, sx * (rx + 0.12) * ux, (ry + 0.12) * uy, 0.12, 0.1, within=(AIR, SOFT, FAT))
    return place
  if finding in ('effusion', 'hemorrhage'):
    thick = rng.uniform(0.14, 0.2) if finding == 'hemorrhage' else 0.12
    inner = c.ellipse_mask(-sx * thick, 0.0, rx - 0.03, ry - 0.05)
    outer = c.ellipse_mask(0, 0, rx - 0.02, ry - 0.02)
    side = c.X * sx > 0.05
    c.paint(BLOOD if finding == 'hemorrhage' else FLUID, outer & ~inner & side, within=brain)
    return 'subdural' if finding == 'effusion' else 'convexity'
  return None


def _brain_frontal(c, rng, finding, sx):
  """Frontal (PA) skull radiograph."""
  rx, ry = rng.uniform(0.62, 0.7), rng.uniform(0.62, 0.7)
  c.ellipse(SOFT, 0, -0.2, rx + 0.08, ry + 0.08)
  c.polygon(
    SOFT, [(-0.62, -0.2), (0.62, -0.2), (0.5, 0.75), (0.2, 0.98), (-0.2, 0.98), (-0.5, 0.75)]
  )
  c.ellipse(BONE, 0, -0.2, rx + 0.03, ry + 0.03)  # vault
  c.ellipse(MARROW, 0, -0.2, rx - 0.03, ry - 0.03)
  c.ellipse(GREY, 0, -0.2, rx - 0.06, ry - 0.07)
  c.line(MARROW, [(0, -0.2 - ry), (0, -0.1)], 0.03)  # sagittal suture
  for s in (-1, 1):
    c.ellipse(BONE, s * 0.24, 0.3, 0.16, 0.13)  # orbits
    c.ellipse(SOFT, s * 0.24, 0.3, 0.12, 0.095)
    c.line(BONE, [(s * 0.6, 0.1), (s * 0.12, 0.22)], 0.06)  # petrous ridges
    c.polygon(
      GAS, [(s * 0.1, 0.45), (s * 0.3, 0.45), (s * 0.26, 0.62), (s * 0.1, 0.64)]
    )  # maxillary sinuses
  c.polygon(GAS, [(0, 0.32), (0.08, 0.64), (-0.08, 0.64)])  # nasal cavity
  c.line(
    BONE, [(-0.45, 0.55), (-0.4, 0.82), (-0.2, 0.97), (0.2, 0.97), (0.4, 0.82), (0.45, 0.55)], 0.08
  )  # mandible
  c.line(BONE, [(-0.3, 0.72), (0.3, 0.72)], 0.07)  # teeth
  inside = (GREY,)
  cy = -0.2
  if finding == 'mass':
    place = _pick(rng, ['frontal lobe', 'parietal lobe'])
    y = cy - 0.25 if place == 'frontal lobe' else cy + 0.1
    _mass(c, sx * 0.3, y, rng.uniform(0.13, 0.18), rng, within=(GREY, MARROW))
    return place
  if finding == 'fracture':
    place = 'parietal bone'
    y0 = cy + rng.uniform(-0.45, -0.15)
    _fracture(
      c,
      (sx * 0.12, y0),
      (sx * (rx + 0.1), y0 + 0.25),
      swelling=(sx * (rx + 0.06), y0 + 0.2, 0.1),
      rng=rng,
    )
    c.line(FRACTURE, [(sx * 0.12, y0), (sx * (rx + 0.1), y0 + 0.25)], 0.05, within=(GREY,))
    return place
  if finding in ('effusion', 'hemorrhage'):
    thick = 0.16 if finding == 'hemorrhage' else 0.12
    inner = c.ellipse_mask(-sx * thick, cy, rx - 0.06, ry - 0.08)
    m = c.ellipse_mask(0, cy, rx - 0.06, ry - 0.07) & ~inner
    c.paint(BLOOD if finding == 'hemorrhage' else FLUID, m, within=inside)
    return 'subdural' if finding == 'effusion' else 'convexity'
  return None


def _chest_axial(c, rng, finding, sx):
  rx, ry, cy = rng.uniform(0.86, 0.94), rng.uniform(0.6, 0.68), 0.05
  c.ellipse(SOFT, 0, cy, rx, ry)
  c.ellipse(FAT, 0, cy, rx - 0.04, ry - 0.04)
  c.ellipse(SOFT, 0, cy, rx - 0.1, ry - 0.09)
  for a0 in list(range(195, 345, 30)) + list(range(15, 165, 30)):  # ribs
    if abs(a0 - 90) < 20 or abs(a0 - 270) < 20:
      continue
    c.line(BONE, _arc(0, cy, rx - 0.13, ry - 0.1, a0, a0 + 20, 5), 0.06)
  lw, lh = rng.uniform(0.3, 0.36), rng.uniform(0.36, 0.42)
  for s in (-1, 1):
    c.ellipse(LUNG, s * 0.38, cy, lw, lh, s * 0.15)
  c.ellipse(SOFT, 0.1, cy - 0.05, rng.uniform(0.22, 0.28), 0.26, 0.5)  # heart
  c.ellipse(FAT, 0.1, cy - 0.05, 0.24, 0.28, 0.5, within=(LUNG,))
  c.ellipse(ORGAN, 0.1, cy - 0.05, 0.16, 0.18, 0.5)
  c.ellipse(SOFT, 0.1, cy + 0.2, 0.06, 0.06)  # aorta
  c.ellipse(BONE, 0, cy + 0.36, 0.12, 0.11)  # vertebra
  c.ellipse(MARROW, 0, cy + 0.36, 0.09, 0.08)
  c.ellipse(FLUID, 0, cy + 0.52, 0.045, 0.045)
  c.line(BONE, [(0, cy + 0.58), (0, cy + 0.66)], 0.06)
  c.ellipse(BONE, 0, cy - ry + 0.1, 0.1, 0.04)  # sternum
  for _ in range(12):  # vessels
    s = rng.choice([-1, 1])
    c.ellipse(
      SOFT, s * rng.uniform(0.2, 0.6), cy + rng.uniform(-0.3, 0.3), 0.015, 0.015, within=(LUNG,)
    )
  if finding == 'mass':
    place = _pick(rng, ['upper lobe', 'lower lobe'])
    y = cy + (-0.15 if place == 'upper lobe' else 0.15)
    _mass(c, sx * rng.uniform(0.35, 0.45), y, rng.uniform(0.1, 0.15), rng, within=(LUNG, SOFT))
    return place
  if finding == 'fracture':
    a = math.radians(rng.uniform(150, 200) if sx < 0 else rng.uniform(-20, 30))
    x, y = (rx - 0.13) * math.cos(a), cy + (ry - 0.1) * math.sin(a)
    _fracture(c, (x * 0.85, y - 0.06), (x * 1.1, y + 0.06), swelling=(x * 1.08, y, 0.1), rng=rng)
    c.ellipse(SOFT, x * 1.02, y, 0.08, 0.06, within=(FAT,))
    return 'rib'
  if finding == 'effusion':
    level = cy + rng.uniform(0.05, 0.18)  # dependent layer
    c.paint(FLUID, (c.Y > level) & (c.X * sx > 0.1), within=(LUNG,))
    return 'pleural'
  if finding == 'hemorrhage':
    place = _pick(rng, ['upper lobe', 'lower lobe'])
    y = cy + (-0.15 if place == 'upper lobe' else 0.15)
    _blob(c, BLOOD, sx * 0.4, y, rng.uniform(0.16, 0.22), rng, within=(LUNG, SOFT))
    return place
  return None


def _chest_frontal(c, rng, finding, sx):
  """PA chest radiograph."""
  c.polygon(
    SOFT,
    [
      (-0.2, -1.1),
      (0.2, -1.1),
      (0.25, -0.85),
      (0.85, -0.7),
      (0.98, -0.5),
      (0.95, 1.1),
      (-0.95, 1.1),
      (-0.98, -0.5),
      (-0.85, -0.7),
      (-0.25, -0.85),
    ],
  )
  for s in (-1, 1):
    c.ellipse(BONE, s * 0.95, -0.62, 0.14, 0.14)  # humeral heads
    c.ellipse(MARROW, s * 0.95, -0.62, 0.1, 0.1)
  dome = rng.uniform(0.35, 0.5)
  lungs = []
  for s in (-1, 1):
    base = dome + (0.05 if s > 0 else 0.0)
    pts = [
      (s * 0.12, -0.55),
      (s * 0.28, -0.78),
      (s * 0.52, -0.72),
      (s * 0.76, -0.4),
      (s * 0.84, 0.1),
      (s * 0.82, base + 0.22),
      (s * 0.6, base),
      (s * 0.35, base - 0.1),
      (s * 0.12, base - 0.05),
    ]
    lungs.append(pts)
    c.polygon(LUNG, pts)
  c.ellipse(SOFT, 0.16, dome - 0.22, rng.uniform(0.3, 0.38), 0.28, 0.2)  # heart
  c.polygon(SOFT, [(-0.13, -0.9), (0.13, -0.9), (0.16, -0.2), (-0.16, -0.2)])
  c.ellipse(SOFT, 0.18, -0.45, 0.09, 0.08)  # aortic knob
  for k in range(9):  # ribs
    y = -0.75 + k * 0.15
    for s in (-1, 1):
      c.line(
        MARROW,
        [(s * 0.1, y - 0.04), (s * 0.45, y - 0.1), (s * 0.75, y - 0.02), (s * 0.85, y + 0.1)],
        0.04,
        within=(LUNG, SOFT),
      )
  for s in (-1, 1):
    c.rod(BONE, (s * 0.12, -0.75), (s * 0.62, -0.84), 0.07)  # clavicles
  for _ in range(14):  # lung markings
    s = rng.choice([-1, 1])
    a = rng.uniform(-1.2, 1.2)
    r = rng.uniform(0.25, 0.45)
    x0, y0 = s * 0.2, -0.15
    c.line(
      SOFT, [(x0, y0), (x0 + s * r * math.cos(a), y0 + r * math.sin(a))], 0.015, within=(LUNG,)
    )
  if finding == 'mass':
    place = _pick(rng, ['upper lobe', 'lower lobe'])
    y = -0.45 if place == 'upper lobe' else 0.05
    _mass(c, sx * 0.5, y, rng.uniform(0.11, 0.15), rng, within=(LUNG, BONE))
    return place
  if finding == 'fracture':
    k = rng.integers(3, 7)
    y = -0.75 + k * 0.15
    x = sx * rng.uniform(0.65, 0.75)
    _fracture(c, (x - 0.02, y - 0.15), (x + 0.02, y + 0.15))
    c.ellipse(SOFT, sx * 0.93, y, 0.08, 0.1, within=(AIR,))
    return 'rib'
  if finding == 'effusion':
    level = dome - rng.uniform(0.1, 0.35)
    m = (c.Y > level - 0.25 * (c.X * sx - 0.45).clip(0)) & (c.X * sx > 0.08)
    c.paint(FLUID, m, within=(LUNG, BONE))
    return 'pleural'
  if finding == 'hemorrhage':
    place = _pick(rng, ['upper lobe', 'lower lobe'])
    y = -0.4 if place == 'upper lobe' else 0.05
    _blob(c, BLOOD, sx * 0.5, y, rng.uniform(0.2, 0.26), rng, within=(LUNG, BONE, SOFT))
    return place
  return None


def _abdomen_axial(c, rng, finding, sx):
  rx, ry, cy = rng.uniform(0.86, 0.94), rng.uniform(0.62, 0.7), 0.0
  c.ellipse(SOFT, 0, cy, rx, ry)
  c.ellipse(FAT, 0, cy, rx - 0.03, ry - 0.03)
  c.ellipse(SOFT, 0, cy, rx - 0.11, ry - 0.1)
  c.ellipse(FAT, 0, cy, rx - 0.15, ry - 0.14)
  for a in (160, 200, 340, 20):  # lower ribs
    t = math.radians(a)
    c.ellipse(BONE, (rx - 0.13) * math.cos(t), cy + (ry - 0.12) * math.sin(t), 0.04, 0.05)
  liver = (-0.36, cy - 0.08, rng.uniform(0.34, 0.4), rng.uniform(0.4, 0.46))
  spleen = (0.52, cy + 0.1, 0.14, 0.22)
  c.ellipse(ORGAN, *liver, 0.2)
  c.ellipse(ORGAN, *spleen, -0.4)
  c.ellipse(SOFT, 0.25, cy - 0.3, 0.2, 0.14, -0.3)  # stomach
  c.ellipse(GAS, 0.25, cy - 0.36, 0.14, 0.06, -0.3)
  kidneys = {}
  for s in (-1, 1):
    kx, ky = s * 0.36, cy + 0.3
    kidneys[s] = (kx, ky)
    c.ellipse(KIDNEY, kx, ky, 0.12, 0.16, s * 0.5)
    c.ellipse(FAT, kx - s * 0.04, ky, 0.04, 0.06, s * 0.5)
    c.ellipse(SOFT, s * 0.14, cy + 0.36, 0.07, 0.1)  # psoas
  c.ellipse(BONE, 0, cy + 0.4, 0.13, 0.12)  # vertebra
  c.ellipse(MARROW, 0, cy + 0.4, 0.1, 0.09)
  c.ellipse(FLUID, 0, cy + 0.58, 0.045, 0.04)
  c.ellipse(SOFT, 0.06, cy + 0.2, 0.055, 0.055)  # aorta
  c.ellipse(SOFT, -0.1, cy + 0.18, 0.06, 0.045)  # IVC
  for _ in range(rng.integers(4, 8)):  # bowel
    x, y = rng.uniform(-0.05, 0.4), cy + rng.uniform(-0.45, 0.05)
    r = rng.uniform(0.04, 0.08)
    c.ellipse(SOFT, x, y, r, r, within=(FAT,))
    c.ellipse(GAS if rng.random() < 0.6 else FLUID, x, y, r * 0.6, r * 0.6, within=(SOFT,))
  organ = liver if sx < 0 else spleen
  if finding in ('mass', 'hemorrhage'):
    place = _pick(rng, ['organ', 'kidney'])
    if place == 'kidney':
      x, y = kidneys[int(sx)]
      r = 0.09
    else:
      x, y = organ[0] + sx * 0.05, organ[1]
      r = 0.12 if sx < 0 else 0.1
      place = 'liver' if sx < 0 else 'spleen'
    if finding == 'mass':
      _mass(c, x, y, r, rng, within=(ORGAN, KIDNEY, FAT))
    else:
      _blob(c, BLOOD, x, y, r * 1.4, rng, within=(ORGAN, KIDNEY, FAT))
    return place
  if finding == 'fracture':
    t = math.radians(rng.choice([160, 200]) if sx < 0 else rng.choice([20, 340]))
    x, y = (rx - 0.13) * math.cos(t), cy + (ry - 0.12) * math.sin(t)
    _fracture(c, (x - 0.01, y - 0.08), (x + 0.01, y + 0.08), swelling=(x * 1.06, y, 0.13), rng=rng)
    return 'rib'
  if finding == 'effusion':
    x, y, a, b = organ
    m = c.ellipse_mask(x + sx * 0.06, y, a + 0.1, b + 0.08)
    c.paint(FLUID, m, within=(FAT, SOFT))
    return 'perihepatic' if sx < 0 else 'perisplenic'
  return None


def _abdomen_frontal(c, rng, finding, sx):
  """Supine abdominal radiograph (KUB)."""
  c.polygon(
    SOFT, [(-0.85, -1.1), (0.85, -1.1), (0.95, 0.2), (0.98, 1.1), (-0.98, 1.1), (-0.95, 0.2)]
  )
  ys = np.linspace(-0.95, 0.45, 5)
  for y in ys:  # lumbar vertebrae
    c.polygon(BONE, [(-0.13, y - 0.12), (0.13, y - 0.12), (0.14, y + 0.12), (-0.14, y + 0.12)])
    c.polygon(MARROW, [(-0.1, y - 0.09), (0.1, y - 0.09), (0.11, y + 0.09), (-0.11, y + 0.09)])
    for s in (-1, 1):
      c.rod(BONE, (s * 0.13, y), (s * 0.26, y + 0.02), 0.05)
  for s in (-1, 1):
    c.polygon(
      MARROW,
      [
        (s * 0.15, 0.6),
        (s * 0.4, 0.55),
        (s * 0.85, 0.45),
        (s * 0.9, 0.8),
        (s * 0.55, 1.1),
        (s * 0.15, 1.1),
      ],
    )
    c.line(BONE, [(s * 0.4, 0.55), (s * 0.85, 0.45), (s * 0.9, 0.8)], 0.05)
    for k in range(2):  # lower ribs
      y = -1.05 + 0.17 * k
      c.line(BONE, [(s * 0.18, y), (s * 0.55, y + 0.15), (s * 0.8, y + 0.35)], 0.05)
    c.line(FAT, [(s * 0.15, -0.4), (s * 0.42, 0.55)], 0.04)  # psoas stripes
  c.polygon(MARROW, [(-0.15, 0.6), (0.15, 0.6), (0.08, 1.1), (-0.08, 1.1)])
  c.ellipse(ORGAN, -0.55, -0.7, 0.4, 0.35)  # liver shadow
  # Colon frame and small-bowel gas.
  frame = [
    (-0.6, 0.45),
    (-0.62, -0.3),
    (-0.4, -0.5),
    (0.0, -0.42),
    (0.45, -0.55),
    (0.65, -0.4),
    (0.62, 0.4),
  ]
  c.line(GAS, frame, rng.uniform(0.1, 0.14), within=(SOFT, ORGAN))
  for _ in range(rng.integers(4, 9)):
    c.ellipse(
      GAS,
      rng.uniform(-0.45, 0.45),
      rng.uniform(-0.3, 0.4),
      rng.uniform(0.04, 0.08),
      rng.uniform(0.03, 0.06),
      rng.uniform(0, np.pi),
      within=(SOFT,),
    )
  if finding == 'mass':
    place = 'liver' if sx < 0 else 'spleen'
    _mass(c, sx * 0.55, -0.35, rng.uniform(0.18, 0.24), rng, within=(SOFT, GAS, ORGAN, FAT))
    return place
  if finding == 'hemorrhage':
    place = 'liver' if sx < 0 else 'spleen'
    _blob(c, BLOOD, sx * 0.55, -0.35, rng.uniform(0.25, 0.3), rng, within=(SOFT, GAS, ORGAN, FAT))
    return place
  if finding == 'fracture':
    y = rng.choice(ys[1:4])
    _fracture(c, (sx * 0.2, y - 0.07), (sx * 0.22, y + 0.09))
    return 'transverse process'
  if finding == 'effusion':
    m = (c.X * sx > 0.62) & (c.Y > -0.6) & (c.Y < 0.5)
    c.paint(FLUID, m, within=(SOFT, GAS, ORGAN))
    return 'perihepatic' if sx < 0 else 'perisplenic'
  return None


def _pelvis_axial(c, rng, finding, sx):
  rx, ry, cy = rng.uniform(0.9, 0.96), rng.uniform(0.58, 0.66), 0.0
  c.ellipse(SOFT, 0, cy, rx, ry)
  c.ellipse(FAT, 0, cy, rx - 0.04, ry - 0.04)
  c.ellipse(SOFT, 0, cy, rx - 0.12, ry - 0.1)
  c.ellipse(FAT, 0, cy - 0.05, 0.36, 0.36)
  b = rng.uniform(0.16, 0.24)
  c.ellipse(FLUID, 0, cy - 0.2, b, b * 0.8)  # bladder
  c.ellipse(SOFT, 0, cy + 0.26, 0.09, 0.08)  # rectum
  c.ellipse(GAS, 0, cy + 0.26, 0.04, 0.035)
  c.ellipse(BONE, 0, cy + 0.5, 0.06, 0.05)  # coccyx
  heads = {}
  for s in (-1, 1):
    hx, hy = s * 0.55, cy
    heads[s] = (hx, hy)
    cup = c.ellipse_mask(hx - s * 0.03, hy, 0.25, 0.25)
    c.paint(BONE, cup & (c.X * s < 0.6))  # acetabulum
    c.ellipse(MARROW, hx - s * 0.03, hy, 0.19, 0.19, within=(BONE,))
    c.ellipse(DISC, hx, hy, 0.19, 0.19)  # joint space
    c.ellipse(BONE, hx, hy, 0.17, 0.17)  # femoral head
    c.ellipse(MARROW, hx, hy, 0.13, 0.13)
    c.ellipse(SOFT, s * 0.3, cy - 0.42, 0.04, 0.04)  # femoral vessels
  hx, hy = heads[int(sx)]
  if finding == 'mass':
    place = 'sidewall'
    _mass(c, sx * 0.28, cy + 0.02, rng.uniform(0.1, 0.13), rng, within=(FAT, SOFT, FLUID))
    return place
  if finding == 'fracture':
    place = _pick(rng, ['acetabulum', 'proximal femur'])
    if place == 'acetabulum':
      _fracture(c, (hx - sx * 0.2, hy - 0.12), (hx - sx * 0.26, hy + 0.12))
    else:
      _fracture(c, (hx - 0.05, hy - 0.16), (hx + 0.05, hy + 0.16))
    return place
  if finding == 'effusion':
    m = c.ellipse_mask(hx + sx * 0.05, hy, 0.27, 0.25)
    c.paint(FLUID, m, within=(DISC, SOFT, FAT))
    return 'hip joint'
  if finding == 'hemorrhage':
    _blob(c, BLOOD, sx * 0.3, cy + 0.05, rng.uniform(0.15, 0.2), rng, within=(FAT, SOFT, FLUID))
    return 'sidewall'
  return None


def _pelvis_frontal(c, rng, finding, sx):
  """AP pelvis radiograph."""
  c.polygon(
    SOFT, [(-0.85, -1.1), (0.85, -1.1), (0.98, -0.4), (0.98, 1.1), (-0.98, 1.1), (-0.98, -0.4)]
  )
  c.polygon(FLUID, [(-0.2, 0.1), (0.2, 0.1), (0.22, 0.35), (-0.22, 0.35)])
  c.polygon(BONE, [(-0.16, -1.05), (0.16, -1.05), (0.17, -0.82), (-0.17, -0.82)])
  c.polygon(MARROW, [(-0.26, -0.72), (0.26, -0.72), (0.1, -0.05), (-0.1, -0.05)])
  wings, necks = {}, {}
  for s in (-1, 1):
    wing = [
      (s * 0.2, -0.68),
      (s * 0.42, -0.92),
      (s * 0.78, -0.82),
      (s * 0.9, -0.55),
      (s * 0.72, -0.2),
      (s * 0.62, 0.05),
      (s * 0.35, 0.0),
      (s * 0.18, -0.3),
    ]
    wings[s] = wing
    c.polygon(MARROW, wing)
    c.line(BONE, wing[1:5], 0.05)  # iliac crest
    c.line(BONE, [(s * 0.12, -0.1), (s * 0.3, 0.25), (s * 0.5, 0.42)], 0.05)
    c.ellipse(BONE, s * 0.3, 0.55, 0.24, 0.19)  # pubis / ischium
    c.ellipse(MARROW, s * 0.3, 0.55, 0.2, 0.155)
    c.ellipse(SOFT, s * 0.3, 0.55, 0.13, 0.09, s * 0.3)  # obturator
    hx, hy = s * 0.58, 0.2
    c.ellipse(BONE, hx, hy - 0.01, 0.22, 0.22)  # acetabulum
    c.ellipse(SOFT, hx, hy, 0.19, 0.19)
    c.ellipse(MARROW, hx, hy, 0.17, 0.17)  # femoral head
    neck = [(hx, hy), (s * 0.85, 0.5)]
    necks[s] = neck
    c.rod(MARROW, *neck, 0.18)
    c.ellipse(MARROW, s * 0.88, 0.55, 0.12, 0.14)  # trochanter
    c.rod(BONE, (s * 0.82, 0.55), (s * 0.78, 1.2), 0.26)  # shaft
    c.rod(MARROW, (s * 0.82, 0.55), (s * 0.78, 1.2), 0.14)
  c.line(SOFT, [(0, 0.42), (0, 0.68)], 0.03)  # symphysis
  if finding == 'mass':
    _mass(c, sx * 0.58, -0.55, rng.uniform(0.12, 0.16), rng, within=(MARROW,))
    return 'iliac wing'
  if finding == 'fracture':
    place = _pick(rng, ['femoral neck', 'pubic ramus', 'iliac wing'])
    if place == 'femoral neck':
      (x0, y0), (x1, y1) = necks[int(sx)]
      x, y = (x0 + x1) / 2, (y0 + y1) / 2
      _fracture(c, (x - sx * 0.1, y + 0.1), (x + sx * 0.1, y - 0.1))
    elif place == 'pubic ramus':
      _fracture(c, (sx * 0.2, 0.3), (sx * 0.24, 0.48))
    else:
      _fracture(c, (sx * 0.45, -0.95), (sx * 0.62, -0.4))
    return place
  if finding == 'effusion':
    hx, hy = sx * 0.58, 0.2
    m = c.ellipse_mask(hx + sx * 0.08, hy + 0.02, 0.26, 0.24)
    c.paint(FLUID, m, within=(SOFT,))
    return 'hip joint'
  if finding == 'hemorrhage':
    _blob(
      c, BLOOD, sx * 0.28, 0.15, rng.uniform(0.18, 0.22), rng, within=(SOFT, FLUID, MARROW, BONE)
    )
    return 'sidewall'
  return None


_LEVELS = ('L1', 'L2', 'L3', 'L4', 'L5')


def _spine_sagittal(c, rng, finding, sx):
  """Sagittal lumbar spine, anterior on the image left."""
  c.polygon(SOFT, [(-1.1, -1.1), (0.82, -1.1), (0.9, 1.1), (-1.1, 1.1)])
  c.polygon(FAT, [(0.7, -1.1), (0.82, -1.1), (0.9, 1.1), (0.78, 1.1)])
  c.polygon(FAT, [(-1.1, -1.1), (-0.6, -1.1), (-0.6, 1.1), (-1.1, 1.1)])
  for _ in range(rng.integers(3, 6)):  # bowel gas
    c.ellipse(GAS, rng.uniform(-0.95, -0.7), rng.uniform(-0.9, 0.9), 0.06, 0.05, within=(FAT, SOFT))
  c.line(SOFT, [(-0.5, -1.1), (-0.52, 0.3), (-0.45, 1.1)], 0.1)  # aorta
  h, d = rng.uniform(0.22, 0.25), rng.uniform(0.07, 0.09)
  pitch = h + d
  lordosis = rng.uniform(0.06, 0.12)

  def xc(y):
    return -0.12 - lordosis * (1.0 - y * y)

  ys = [(k - 3) * pitch for k in range(7)]  # T12 .. S1
  canal = [(xc(y) + 0.25, y) for y in np.linspace(-1.1, 1.1, 9)]
  c.line(FLUID, canal, 0.13)  # thecal sac
  cord_end = ys[1] + pitch * 0.5
  c.line(
    GREY, [(x, y) for x, y in canal if y < cord_end] + [(xc(cord_end) + 0.25, cord_end)], 0.05
  )  # conus
  bodies = {}
  for k, y in enumerate(ys):
    x = xc(y)
    tilt = 2 * lordosis * y * 0.3
    corners = [
      (x - 0.2, y - h / 2 + tilt * 0.2),
      (x + 0.2, y - h / 2),
      (x + 0.2, y + h / 2),
      (x - 0.2, y + h / 2 - tilt * 0.2),
    ]
    bodies[k] = corners
    if k < 6:
      yd = y + pitch / 2
      c.ellipse(DISC, xc(yd) + 0.01, yd, 0.2, d * 0.55)
    c.polygon(BONE, corners)
    c.polygon(MARROW, [(px * 0.0 + (px - x) * 0.82 + x, (py - y) * 0.75 + y) for px, py in corners])
    # posterior elements: lamina and spinous process
    c.polygon(
      BONE,
      [
        (x + 0.36, y - 0.08),
        (x + 0.46, y - 0.12),
        (x + 0.72, y - 0.02),
        (x + 0.72, y + 0.07),
        (x + 0.46, y + 0.06),
        (x + 0.36, y + 0.04),
      ],
    )
    c.polygon(MARROW, [(x + 0.42, y - 0.07), (x + 0.68, y), (x + 0.42, y + 0.02)])
  if finding == 'normal':
    return None
  if finding == 'fracture':
    k = int(rng.integers(1, 5))  # L1..L4
    x, y = xc(ys[k]), ys[k]
    drop = rng.uniform(0.07, 0.1)
    c.polygon(
      SOFT,
      [
        (x - 0.21, y - h / 2 - 0.01),
        (x + 0.21, y - h / 2 - 0.01),
        (x + 0.21, y - h / 2 + drop * 0.4),
        (x - 0.21, y - h / 2 + drop),
      ],
      within=_BONY,
    )
    c.line(
      FRACTURE,
      [(x - 0.2, y - h / 2 + drop + 0.02), (x + 0.2, y - h / 2 + drop * 0.4 + 0.02)],
      0.05,
      within=_BONY,
    )
    return _LEVELS[k - 1]
  if finding == 'mass':
    k = int(rng.integers(1, 6))
    x, y = xc(ys[k]), ys[k]
    _mass(c, x + 0.02, y, rng.uniform(0.08, 0.11), rng, within=_BONY)
    return _LEVELS[k - 1]
  k = int(rng.integers(1, 5))  # disc level k/k+1
  y = ys[k] + pitch / 2
  x = xc(y)
  if finding == 'effusion':
    c.ellipse(FLUID, x + 0.5, y, rng.uniform(0.09, 0.12), 0.07, within=(SOFT, FAT))
    return f'{_LEVELS[k - 1]}-{_LEVELS[k]}'
  c.ellipse(BLOOD, x + 0.3, y, 0.05, rng.uniform(0.18, 0.24), within=(FLUID, GREY))
  return f'{_LEVELS[k - 1]}-{_LEVELS[k]}'


def _knee_coronal(c, rng, finding, sx):
  """Coronal / AP knee of a right leg (mirrored for a left one)."""
  c.polygon(
    FAT,
    [
      (-0.62, -1.1),
      (0.62, -1.1),
      (0.6, -0.1),
      (0.56, 0.2),
      (0.5, 1.1),
      (-0.5, 1.1),
      (-0.58, 0.2),
      (-0.6, -0.1),
    ],
  )
  c.polygon(
    SOFT,
    [
      (-0.54, -1.1),
      (0.54, -1.1),
      (0.52, -0.1),
      (0.48, 0.2),
      (0.42, 1.1),
      (-0.42, 1.1),
      (-0.5, 0.2),
      (-0.52, -0.1),
    ],
  )
  c.polygon(DISC, [(-0.34, 0.0), (0.34, 0.0), (0.34, 0.16), (-0.34, 0.16)])
  fw = rng.uniform(0.15, 0.18)
  c.polygon(
    BONE,
    [
      (-fw, -1.2),
      (fw, -1.2),
      (fw + 0.02, -0.6),
      (0.36, -0.2),
      (0.36, -0.08),
      (-0.36, -0.08),
      (-0.36, -0.2),
      (-fw - 0.02, -0.6),
    ],
  )
  for s in (-1, 1):
    c.ellipse(BONE, s * 0.19, -0.1, 0.17, 0.16)  # condyles
  c.ellipse(DISC, 0, 0.05, 0.06, 0.1)  # notch
  c.polygon(
    MARROW,
    [
      (-fw + 0.05, -1.2),
      (fw - 0.05, -1.2),
      (fw - 0.03, -0.6),
      (0.3, -0.2),
      (0.3, -0.1),
      (-0.3, -0.1),
      (-0.3, -0.2),
      (-fw + 0.03, -0.6),
    ],
  )
  for s in (-1, 1):
    c.ellipse(MARROW, s * 0.19, -0.1, 0.12, 0.11)
  tibia = [
    (-0.37, 0.1),
    (0.37, 0.1),
    (0.36, 0.22),
    (0.17, 0.55),
    (0.15, 1.2),
    (-0.15, 1.2),
    (-0.17, 0.55),
    (-0.36, 0.22),
  ]
  c.polygon(BONE, tibia)
  c.polygon(
    MARROW,
    [
      (-0.31, 0.14),
      (0.31, 0.14),
      (0.3, 0.22),
      (0.12, 0.55),
      (0.1, 1.2),
      (-0.1, 1.2),
      (-0.12, 0.55),
      (-0.3, 0.22),
    ],
  )
  for s in (-1, 1):
    c.polygon(BONE, [(s * 0.02, 0.1), (s * 0.06, 0.04), (s * 0.1, 0.1)])
    c.polygon(LIGAMENT, [(s * 0.37, 0.02), (s * 0.2, 0.07), (s * 0.37, 0.12)])
    c.line(LIGAMENT, [(s * 0.4, -0.25), (s * 0.42, 0.3)], 0.03, within=(SOFT,))
  c.ellipse(BONE, -0.43, 0.3, 0.09, 0.08)  # fibula (lateral)
  c.polygon(BONE, [(-0.47, 0.32), (-0.38, 0.32), (-0.32, 1.2), (-0.4, 1.2)])
  c.ellipse(MARROW, -0.43, 0.3, 0.05, 0.045)
  if finding == 'fracture':
    place = _pick(rng, ['tibial plateau', 'distal femur', 'proximal fibula'])
    if place == 'tibial plateau':
      _fracture(c, (-0.36, 0.32), (0.02, 0.11))
    elif place == 'distal femur':
      _fracture(c, (-0.35, -0.3), (0.35, -0.45))
    else:
      _fracture(c, (-0.48, 0.48), (-0.33, 0.42))
    c.ellipse(SOFT, -0.6, 0.2, 0.1, 0.3, within=(AIR, FAT))
    return place
  if finding == 'mass':
    place = _pick(rng, ['distal femur', 'proximal tibia'])
    y = -0.4 if place == 'distal femur' else 0.35
    _mass(c, rng.uniform(-0.05, 0.05), y, rng.uniform(0.11, 0.14), rng, within=_BONY)
    return place
  if finding == 'effusion':
    for s in (-1, 1):
      c.ellipse(FLUID, s * 0.42, -0.3, 0.1, 0.25, within=(SOFT, FAT, LIGAMENT))
    c.ellipse(FLUID, 0, -0.5, 0.42, 0.1, within=(SOFT,))
    return 'joint'
  if finding == 'hemorrhage':
    place = _pick(rng, ['thigh', 'calf'])
    y = -0.75 if place == 'thigh' else 0.75
    _blob(c, BLOOD, rng.choice([-1, 1]) * 0.35, y, rng.uniform(0.16, 0.2), rng, within=(SOFT, FAT))
    return place
  return None


_FINGERS = (
  (-0.27, 0.72, -0.12),
  (-0.09, 0.82, -0.04),
  (0.09, 0.76, 0.04),
  (0.26, 0.6, 0.13),
)  # (x at base, length, tilt) index..little


def _hand_pa(c, rng, finding, sx):
  """PA view of a right hand (thumb on the image left); mirrored if left."""
  spread = rng.uniform(0.7, 1.3)
  soft = c.poly_mask(
    [(-0.34, 1.2), (0.34, 1.2), (0.37, 0.5), (0.44, 0.0), (-0.42, -0.02), (-0.4, 0.5)]
  )
  soft |= c.ellipse_mask(-0.36, 0.2, 0.15, 0.26, -0.3)  # thenar
  tips = []
  for x, length, tilt in _FINGERS:
    t = tilt * spread
    tip = (x + length * math.sin(t), -0.04 - length * math.cos(t))
    tips.append(tip)
    soft |= c.line_mask([(x, 0.0), tip], 0.15)
    soft |= c.ellipse_mask(tip[0], tip[1], 0.075, 0.075)
  thumb_tip = (-0.78 - 0.1 * (spread - 1), -0.2)
  soft |= c.line_mask([(-0.36, 0.3), thumb_tip], 0.16)
  soft |= c.ellipse_mask(*thumb_tip, 0.08, 0.08)
  c.paint(SOFT, soft)
  c.bone((-0.17, 1.25), (-0.17, 0.58), 0.2)  # radius
  c.polygon(BONE, [(-0.3, 0.62), (-0.04, 0.62), (-0.04, 0.52), (-0.32, 0.5)])
  c.bone((0.16, 1.25), (0.16, 0.6), 0.14)  # ulna
  for k in range(8):  # carpals
    x = -0.22 + 0.145 * (k % 4)
    y = 0.44 if k < 4 else 0.3
    c.ellipse(BONE, x, y, 0.065, 0.06, rng.uniform(0, np.pi))
    c.ellipse(MARROW, x, y, 0.035, 0.03)
  bones = {}
  for i, (x, length, tilt) in enumerate(_FINGERS):  # metacarpals
    base = (x * 0.75, 0.24)
    head = (x, -0.02)
    c.bone(base, head, 0.08)
    bones[('meta', i)] = (base, head)
    tip = tips[i]
    for j, (f0, f1) in enumerate(((0.04, 0.42), (0.47, 0.72), (0.77, 0.95))):
      p0 = (x + (tip[0] - x) * f0, -0.02 + (tip[1] + 0.02) * f0)
      p1 = (x + (tip[0] - x) * f1, -0.02 + (tip[1] + 0.02) * f1)
      c.bone(p0, p1, 0.07 - 0.01 * j)
      bones[('phal', i, j)] = (p0, p1)
  c.bone((-0.28, 0.28), (-0.5, 0.02), 0.08)  # thumb
  c.bone((-0.53, -0.02), (-0.66, -0.13), 0.07)
  c.bone((-0.69, -0.16), (thumb_tip[0] + 0.06, thumb_tip[1] + 0.02), 0.06)
  if finding == 'fracture':
    place = _pick(rng, ['fifth metacarpal', 'distal radius', 'proximal phalanx'])
    if place == 'fifth metacarpal':
      (x0, y0), (x1, y1) = bones[('meta', 3)]
    elif place == 'proximal phalanx':
      (x0, y0), (x1, y1) = bones[('phal', 0, 0)]
    else:
      (x0, y0), (x1, y1) = (-0.17, 0.85), (-0.17, 0.6)
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    _fracture(c, (x - 0.14, y - 0.03), (x + 0.14, y + 0.03))
    return place
  if finding == 'mass':
    place = _pick(rng, ['thenar eminence', 'palm'])
    x, y = (-0.36, 0.2) if place == 'thenar eminence' else (0.1, 0.12)
    _mass(c, x, y, rng.uniform(0.11, 0.14), rng, within=(SOFT, BONE, MARROW))
    return place
  if finding == 'effusion':
    m = c.ellipse_mask(-0.03, 0.4, 0.4, 0.17)
    c.paint(FLUID, m, within=(SOFT, AIR))
    return 'wrist'
  if finding == 'hemorrhage':
    place = _pick(rng, ['thenar eminence', 'palm'])
    x, y = (-0.4, 0.22) if place == 'thenar eminence' else (0.15, 0.1)
    _blob(c, BLOOD, x, y, rng.uniform(0.16, 0.2), rng, within=(SOFT, AIR))
    return place
  return None


# (body part, projection?) -> drawing function. Projection views are used
# for X-ray; the others for CT, MRI and ultrasound.
_ANATOMY = {
  ('brain', False): _brain_axial,
  ('brain', True): _brain_frontal,
  ('chest', False): _chest_axial,
  ('chest', True): _chest_frontal,
  ('abdomen', False): _abdomen_axial,
  ('abdomen', True): _abdomen_frontal,
  ('pelvis', False): _pelvis_axial,
  ('pelvis', True): _pelvis_frontal,
  ('spine', False): _spine_sagittal,
  ('spine', True): _spine_sagittal,
  ('knee', False): _knee_coronal,
  ('knee', True): _knee_coronal,
  ('hand', False): _hand_pa,
  ('hand', True): _hand_pa,
}
_CROSS_SECTIONS = ('brain', 'chest', 'abdomen', 'pelvis')
# Ultrasound of these is drawn turned (degrees) so the probe is on the back
# (spine) or on the lateral side of the knee.
_TURNED_FOR_ULTRASOUND = {'spine': -90, 'knee': 90}

# ---------------------------------------------------------------------------
# From tissue labels to pixels.


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur with edge padding (float32)."""
  a = np.asarray(a, np.float32)
  if sigma <= 0:
    return a
  r = max(1, int(3 * sigma + 0.5))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k = (k / k.sum()).astype(np.float32)
  h, w = a.shape
  p = np.pad(a, r, mode='edge')
  t = p[:h] * k[0]
  for i in range(1, 2 * r + 1):
    t += p[i : i + h] * k[i]
  out = t[:, :w] * k[0]
  for i in range(1, 2 * r + 1):
    out += t[:, i : i + w] * k[i]
  return out


def _blur_coarse(a: np.ndarray, sigma: float) -> np.ndarray:
  """A wide Gaussian blur computed at a quarter (or half) resolution."""
  n = a.shape[0]
  factor = 4 if n % 4 == 0 else 2
  small = a.reshape(n // factor, factor, n // factor, factor).mean(axis=(1, 3))
  small = np.ascontiguousarray(_blur(small, sigma / factor), np.float32)
  return np.asarray(Image.fromarray(small, 'F').resize((n, n), Image.BILINEAR))


def _smooth_field(rng, n: int, cells: int = 4) -> np.ndarray:
  """A smooth random field in about [-1, 1] (bias fields, texture)."""
  low = rng.standard_normal((cells, cells)).astype(np.float32)
  img = Image.fromarray(low, 'F').resize((n, n), Image.BICUBIC)
  return np.asarray(img) / 1.5


_APEX = 1.05  # ultrasound probe: this far above the image centre
_FAN_RADIUS = 2.0  # and the depth of the sector, in half image widths


@functools.lru_cache(maxsize=8)
def _fan_geometry(n: int):
  """Polar coordinates about the probe: (radius, angle, flat polar bin)."""
  p = (np.arange(n) + 0.5) / (n / 2) - 1.0
  x, y = np.meshgrid(p, p + _APEX)
  r, angle = np.hypot(x, y), np.arctan2(x, y)
  rbin = np.clip((r / (_FAN_RADIUS + 0.1) * n).astype(np.int64), 0, n - 1)
  abin = np.clip(((angle / np.pi + 0.5) * n).astype(np.int64), 0, n - 1)
  flat = (abin * n + rbin).ravel()
  counts = np.maximum(np.bincount(flat, minlength=n * n), 1)
  return r, angle, flat, counts


def _acoustic_depth(reflect: np.ndarray) -> np.ndarray:
  """How much reflector lies between the probe and each pixel (in pixels)."""
  n = reflect.shape[0]
  _, _, flat, counts = _fan_geometry(n)
  polar = np.bincount(flat, weights=reflect.ravel(), minlength=n * n) / counts
  polar = polar.reshape(n, n)
  before = np.cumsum(polar, axis=1) - polar
  return before.ravel()[flat].reshape(n, n)


def _fan(n: int, half_angle: float) -> np.ndarray:
  """Ultrasound sector mask, in image space."""
  r, angle, _, _ = _fan_geometry(n)
  return (np.abs(angle) < half_angle) & (r > 0.12) & (r < _FAN_RADIUS)


def _shade(lab: np.ndarray, modality: str, rng, body_part: str) -> np.ndarray:
  """Turns the tissue map into an intensity image in [0, 1] (supersampled)."""
  n = lab.shape[0]
  lut = (_LUT[modality] * rng.uniform(0.92, 1.08, len(_LUT[modality]))).astype(np.float32)
  img = lut[lab]
  if modality == 'CT':
    tissue = lab > AIR
    img = img + 0.025 * _smooth_field(rng, n, 12) * tissue
    img = _blur(img, 0.5)
  elif modality == 'MRI':
    img = _blur(img, 1.0)
    img = img * (1.0 + 0.3 * _smooth_field(rng, n, 3))
  elif modality == 'X-ray':
    # Projection: blurred soft-tissue attenuation (filled in under the
    # bones) scaled by body thickness, plus sharp bone on top.
    bony = np.isin(lab, _BONY)
    keep = (~bony).astype(np.float32)
    w_near, w_far = _blur(keep, 2.5), _blur_coarse(keep, n / 16)
    soft = np.where(
      w_near > 0.2,
      _blur(img * keep, 2.5) / np.maximum(w_near, 0.2),
      _blur_coarse(img * keep, n / 16) / np.maximum(w_far, 1e-3),
    )
    thickness = _blur_coarse((lab > AIR).astype(np.float32), n / 12)
    bone = np.where(bony, img - 0.3, 0.0)
    img = soft * (0.3 + 0.8 * thickness) + 0.8 * _blur(bone, 0.7)
    img *= 1.0 + 0.08 * _smooth_field(rng, n, 3)
  else:  # ultrasound
    # Echoes fade below strong reflectors (bone, gas): acoustic shadow.
    reflect = np.isin(lab, (BONE, MARROW, GAS)).astype(np.float32)
    # (The small bones of the hand shadow only partly.)
    k = (12.0 if body_part == 'hand' else 40.0) / n
    img = img * np.exp(-_acoustic_depth(reflect) * k)
    rows = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    img = img * (1.1 - 0.45 * rows)
    speckle = _blur(rng.rayleigh(0.8, (n, n)).astype(np.float32), 0.8)
    img = _blur(img * speckle + 0.02 * speckle, 0.6)
    img = img * _fan(n, math.radians(rng.uniform(30, 38)))
  return img


def tissue_map(
  labels: dict, rng: np.random.Generator, image_size: int = 64
) -> tuple[np.ndarray, str | None]:
  """Draws the anatomy for `labels` as a map of tissue ids.

  Returns (uint8 [2 * image_size] ** 2 map of the tissue constants, place),
  where `place` names where the finding was drawn, or None when normal.
  """
  modality, part = labels['modality'], labels['body_part']
  finding, side = labels['finding'], labels['laterality']
  n = 2 * image_size
  if part in LIMB_BODY_PARTS:
    mirror = side == 'left' or (side == 'none' and rng.random() < 0.5)
    sx = -1.0
  else:
    mirror = False
    sx = {'right': -1.0, 'left': 1.0}.get(side, 1.0)
  scale = rng.uniform(0.86, 1.0)
  shift = tuple(rng.uniform(-0.05, 0.05, 2))
  if modality == 'ultrasound':  # a closer, partial view
    zoom, depth = {'brain': (1.05, 0.15), 'hand': (1.2, 0.1)}.get(
      part, (1.4, 0.45 if part in _TURNED_FOR_ULTRASOUND else 0.15)
    )
    scale *= zoom * rng.uniform(0.93, 1.07)
    shift = (shift[0], shift[1] + depth)
  angle = math.radians(rng.uniform(-6, 6))
  if modality == 'ultrasound' and part in _TURNED_FOR_ULTRASOUND:
    # Probe on the skin over the bone, beam across it.
    angle += math.radians(_TURNED_FOR_ULTRASOUND[part])
  c = _Canvas(n, scale, angle, shift, mirror)
  projection = modality == 'X-ray' and part in _CROSS_SECTIONS
  place = _ANATOMY[part, projection](c, rng, finding, sx)
  if modality == 'ultrasound' and part == 'brain':
    # Cranial ultrasound looks in through the anterior fontanelle.
    c.paint(SOFT, (np.abs(c.X) < 0.3) & (c.Y < -0.4), within=_BONY)
  lab = c.labels
  if modality == 'CT' and part in _CROSS_SECTIONS:
    body_bottom = np.nonzero((lab > AIR).any(axis=1))[0]
    y0 = (body_bottom[-1] + 3) if len(body_bottom) else n - 8
    if y0 < n - 3:
      lab[y0 : y0 + 3, n // 8 : n - n // 8] = TABLE
  return lab, place


def render(
  labels: dict, rng: np.random.Generator, image_size: int = 64
) -> tuple[np.ndarray, str | None]:
  """Draws one image for `labels`; returns (uint8 [size, size], place).

  `place` names where the finding was drawn (used by the caption), or None
  for a normal study.
  """
  modality = labels['modality']
  lab, place = tissue_map(labels, rng, image_size)
  img = _shade(lab, modality, rng, labels['body_part'])
  img = img.reshape(image_size, 2, image_size, 2).mean(axis=(1, 3))
  if modality == 'CT':
    img = img + rng.normal(0, rng.uniform(0.015, 0.03), img.shape)
  elif modality == 'MRI':
    s = rng.uniform(0.012, 0.025)
    img = np.hypot(img + rng.normal(0, s, img.shape), rng.normal(0, s, img.shape))
  elif modality == 'X-ray':
    img = img + rng.normal(0, 0.012, img.shape)
  gain, offset = rng.uniform(0.85, 1.05), rng.uniform(-0.02, 0.04)
  gamma = rng.uniform(0.85, 1.15)
  img = np.clip(img * gain + offset, 0.0, 1.0) ** gamma
  return (img * 255.0 + 0.5).astype(np.uint8), place


# ---------------------------------------------------------------------------
# Captions.

_MOD_NOUN = MODALITY_SYNONYMS
_VIEW = {
  'CT': {
    'brain': ('axial', 'non-contrast'),
    'spine': ('sagittal',),
    'knee': ('coronal',),
    'hand': ('coronal',),
    None: ('axial', 'contrast-enhanced'),
  },
  'MRI': {
    'spine': ('sagittal', 'T2-weighted'),
    'knee': ('coronal',),
    'hand': ('coronal',),
    None: ('axial', 'T2-weighted'),
  },
  'X-ray': {
    'spine': ('lateral',),
    'hand': ('PA',),
    'knee': ('AP',),
    'chest': ('PA', 'frontal'),
    None: ('AP', 'frontal'),
  },
  'ultrasound': {None: ('transverse', 'longitudinal', 'bedside')},
}
_PART_NOUN = {
  'brain': ('brain', 'head'),
  'chest': ('chest', 'thorax'),
  'abdomen': ('abdomen',),
  'pelvis': ('pelvis',),
  'spine': ('lumbar spine',),
  'knee': ('{side}knee',),
  'hand': ('{side}hand',),
}
_PART_ADJ = {
  'brain': ('brain', 'head'),
  'chest': ('chest',),
  'abdomen': ('abdominal', 'abdomen'),
  'pelvis': ('pelvic', 'pelvis'),
  'spine': ('lumbar spine', 'L-spine'),
  'knee': ('{side}knee',),
  'hand': ('{side}hand',),
}
_MASS_ADJ = {
  'CT': ('hyperdense', 'soft tissue', 'enhancing', ''),
  'MRI': ('hyperintense', 'T2 hyperintense', 'enhancing', ''),
  'X-ray': ('dense', 'rounded', ''),
  'ultrasound': ('hypoechoic', 'solid', ''),
}
_BONE_MASS_ADJ = {
  'CT': ('lytic', 'destructive', ''),
  'MRI': ('marrow-replacing', ''),
  'X-ray': ('lytic', 'lucent', ''),
  'ultrasound': ('solid', ''),
}
_BLOOD_ADJ = {
  'CT': ('hyperdense', 'acute', ''),
  'MRI': ('hypointense', 'acute', ''),
  'X-ray': ('acute', ''),
  'ultrasound': ('echogenic', 'acute', ''),
}
_NORMAL = (
  'no acute abnormality',
  'no abnormality',
  'normal findings',
  'no significant abnormality',
  'a normal study',
  'unremarkable, normal appearances',
)
_NORMAL_SHORT = (
  'normal',
  'no acute abnormality',
  'no abnormality detected',
  'unremarkable, normal study',
  'normal appearances',
)

# Place key -> phrases ({side}: 'left'/'right'; {adj}/{mass}/{blood}/{frac}:
# modality-dependent words filled in by _finding_phrase).
_PLACE_PHRASES = {
  ('brain', 'fracture'): (
    'a {frac}fracture of the {side} {place}',
    'a {frac}{side} {place} fracture',
    'a {side} skull fracture through the {place}',
  ),
  ('brain', 'subdural'): ('a {side} subdural effusion', 'a {side} subdural fluid collection'),
  ('brain', 'convexity'): (
    'a {blood}{side} subdural hematoma',
    'a {blood}{side} subdural hemorrhage',
    'a {side} convexity subdural bleed',
  ),
  ('chest', 'rib'): ('a {frac}{side} rib fracture', 'a {frac}fracture of a {side} rib'),
  ('chest', 'pleural'): (
    'a {side} pleural effusion',
    'a {side} pleural effusion with fluid layering',
    '{side} pleural fluid',
  ),
  ('chest', 'hemorrhage'): ('{blood}pulmonary hemorrhage in {where}', 'a {side} {place} hematoma'),
  ('abdomen', 'rib'): (
    'a {frac}{side} lower rib fracture',
    'a {frac}fracture of a {side} lower rib',
  ),
  ('abdomen', 'transverse process'): (
    'a {frac}{side} transverse process fracture',
    'a {frac}fracture of a {side} transverse process',
  ),
  ('abdomen', 'perihepatic'): (
    'a {side} perihepatic effusion',
    'perihepatic fluid on the {side}',
    'a {side} perihepatic fluid collection',
  ),
  ('abdomen', 'perisplenic'): (
    'a {side} perisplenic effusion',
    'perisplenic fluid on the {side}',
    'a {side} perisplenic fluid collection',
  ),
  ('abdomen', 'hemorrhage'): ('a {blood}hematoma in {where}', '{blood}hemorrhage in {where}'),
  ('pelvis', 'fracture'): (
    'a {frac}fracture of the {side} {place}',
    'a {frac}{side} {place} fracture',
  ),
  ('pelvis', 'hip joint'): ('a {side} hip joint effusion', 'fluid in the {side} hip joint'),
  ('pelvis', 'sidewall'): (
    'a {blood}{side} pelvic sidewall hematoma',
    '{blood}hemorrhage along the {side} pelvic sidewall',
  ),
  ('spine', 'fracture'): (
    'a {frac}compression fracture of {place}',
    'an {place} compression fracture',
  ),
  ('spine', 'effusion'): ('a facet joint effusion at {place}', 'an {place} facet joint effusion'),
  ('spine', 'hemorrhage'): ('an epidural hematoma at {place}', 'an epidural bleed at {place}'),
  ('knee', 'fracture'): (
    'a {frac}fracture of the {side} {place}',
    'a {frac}{side} {place} fracture',
  ),
  ('knee', 'joint'): ('a {side} knee joint effusion', 'a large {side} knee effusion'),
  ('knee', 'hemorrhage'): (
    'a {blood}hematoma in the {side} {place}',
    'an intramuscular {side} {place} hematoma',
  ),
  ('hand', 'fracture'): (
    'a {frac}fracture of the {side} {place}',
    'a {frac}{side} {place} fracture',
  ),
  ('hand', 'wrist'): ('a {side} wrist joint effusion', 'fluid in the {side} wrist joint'),
  ('hand', 'hemorrhage'): (
    'a {blood}hematoma of the {side} {place}',
    'a {side} {place} soft tissue hematoma',
  ),
}
_PLACE_WORDS = {'sidewall': 'pelvic sidewall', 'proximal phalanx': 'index proximal phalanx'}
# Where a mass or a hematoma is ({where}); default 'the {side} {place}'.
_WHERE = {
  ('abdomen', 'liver'): 'the {side} hepatic lobe',
  ('abdomen', 'spleen'): 'the spleen, {side} upper quadrant',
  ('spine', None): 'the {place} vertebral body',
}
_BONE_PLACES = ('distal femur', 'proximal tibia', 'iliac wing')

_TEMPLATES = (
  '{View} {mod} of the {part} showing {finding}.',
  '{Mod} {part}: {short}.',
  '{Part_adj} {mod} demonstrates {finding}.',
  '{Finding} on {mod} of the {part}.',
  '{Mod} examination of the {part} reveals {finding}.',
  '{Mod} of the {part}: {short}.',
  '{Part_adj} {mod}. Impression: {short}.',
  'There is {finding} on this {part_adj} {mod}.',
  '{View} {part_adj} {mod} with {finding}.',
  'Findings: {short}. Study: {part_adj} {mod}.',
  '{Mod} images of the {part} show {finding}.',
  '{Part_adj} {mod} shows {finding}.',
  '{Finding} seen on {view} {mod} of the {part}.',
)


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def _pick(rng, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _with_article(np_: str) -> str:
  return ('an ' if np_[:1].lower() in 'aeiou' else 'a ') + np_


def _finding_phrase(rng, labels: dict, place: str | None) -> tuple[str, str]:
  """(noun phrase with article, short form) for the finding."""
  modality, part = labels['modality'], labels['body_part']
  finding, side = labels['finding'], labels['laterality']
  if finding == 'normal':
    return _pick(rng, _NORMAL), _pick(rng, _NORMAL_SHORT)
  words = {
    'side': side if side != 'none' else '',
    'place': _PLACE_WORDS.get(place, place),
    'frac': _pick(rng, ('', 'displaced ', 'nondisplaced ', 'acute ')),
    'blood': (_pick(rng, _BLOOD_ADJ[modality]) + ' ').lstrip(),
  }
  where = _WHERE.get((part, place)) or _WHERE.get((part, None))
  words['where'] = (where or 'the {side} {place}').format(**words)
  if finding == 'mass':
    bone = place in _BONE_PLACES or part == 'spine'
    adj = _pick(rng, (_BONE_MASS_ADJ if bone else _MASS_ADJ)[modality])
    noun = _pick(rng, ('mass', 'lesion', 'tumor'))
    mass = _with_article(f'{adj} {noun}'.strip())
    phrase = f'{mass} in {words["where"]}'
  else:
    key = place if (part, place) in _PLACE_PHRASES else finding
    phrase = _pick(rng, _PLACE_PHRASES[part, key]).format(**words)
    if phrase.startswith('a ') and phrase[2:3] in 'aeiou':
      phrase = 'an ' + phrase[2:]
    if phrase.startswith('an ') and phrase[3:4] not in 'aeiouL':
      phrase = 'a ' + phrase[3:]
  phrase = ' '.join(phrase.split())
  short = phrase
  for article in ('a ', 'an '):
    if short.startswith(article):
      short = short[len(article) :]
  return phrase, short


def caption(rng: np.random.Generator, labels: dict, place: str | None) -> str:
  """A radiology-style caption for `labels` (finding drawn at `place`)."""
  modality, part = labels['modality'], labels['body_part']
  side = labels['laterality']
  finding, short = _finding_phrase(rng, labels, place)
  views = _VIEW[modality].get(part) or _VIEW[modality][None]
  limb_side = f'{side} ' if part in LIMB_BODY_PARTS and side != 'none' else ''
  nouns, adjectives = _PART_NOUN[part], _PART_ADJ[part]
  if modality == 'X-ray' and part == 'brain':
    nouns = adjectives = ('skull', 'head')
  words = {
    'mod': _pick(rng, _MOD_NOUN[modality]),
    'view': _pick(rng, views),
    'part': _pick(rng, nouns).format(side=limb_side),
    'part_adj': _pick(rng, adjectives).format(side=limb_side),
    'finding': finding,
    'short': short,
  }
  template = _pick(rng, _TEMPLATES)
  for key in ('mod', 'view', 'part_adj', 'finding'):
    words[_cap(key)] = _cap(words[key])
  return ' '.join(template.format(**words).split())


# ---------------------------------------------------------------------------
# Examples.


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), zlib.crc32(split.encode()), index])


def sample_labels(rng: np.random.Generator) -> dict[str, str]:
  """Draws modality, body part and finding uniformly, then the laterality."""
  labels = {
    'modality': _pick(rng, MODALITIES),
    'body_part': _pick(rng, BODY_PARTS),
    'finding': _pick(rng, FINDINGS),
  }
  if labels['finding'] == 'normal' or labels['body_part'] in MIDLINE_BODY_PARTS:
    labels['laterality'] = 'none'
  else:
    labels['laterality'] = _pick(rng, ('left', 'right'))
  return labels


def encode_png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img, 'L').save(buf, format='PNG', compress_level=6)
  return buf.getvalue()


def make_example(split: str, index: int, seed: int = 0, image_size: int = 64) -> dict:
  """Example `index` of `split` as a record (see medclip_jax.data.records)."""
  rng = _rng(seed, split, index)
  labels = sample_labels(rng)
  img, place = render(labels, rng, image_size)
  record_id = f'synthetic-{split}-{index:06d}'
  return {
    'id': record_id,
    'group': record_id,
    'image': encode_png(img),
    'caption': caption(rng, labels, place),
    'labels': labels,
  }


def generate(split: str, count: int, seed: int = 0, image_size: int = 64) -> Iterator[dict]:
  """Yields `count` records of `split` (deterministic in seed and split)."""
  if image_size < 32:
    raise ValueError(f'image_size must be >= 32, got {image_size}.')
  if count < 0:
    raise ValueError(f'count must be >= 0, got {count}.')
  for i in range(count):
    yield make_example(split, i, seed, image_size)
