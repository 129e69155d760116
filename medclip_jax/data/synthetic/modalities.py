"""From labels to pixels: how each modality frames the anatomy and shows each tissue.

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
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from medclip_jax.data.synthetic.anatomy import ANATOMY, CROSS_SECTIONS
from medclip_jax.data.synthetic.canvas import (
  AIR,
  BONE,
  BONY,
  GAS,
  MARROW,
  SOFT,
  TABLE,
  Canvas,
)
from medclip_jax.data.synthetic.labels import LIMB_BODY_PARTS

# How bright each modality shows each tissue, in the order of the tissue constants (canvas.py).
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
    bony = np.isin(lab, BONY)
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


# Ultrasound of these is drawn turned (degrees) so the probe is on the back
# (spine) or on the lateral side of the knee.
_TURNED_FOR_ULTRASOUND = {'spine': -90, 'knee': 90}


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
  c = Canvas(n, scale, angle, shift, mirror)
  projection = modality == 'X-ray' and part in CROSS_SECTIONS
  place = ANATOMY[part, projection](c, rng, finding, sx)
  if modality == 'ultrasound' and part == 'brain':
    # Cranial ultrasound looks in through the anterior fontanelle.
    c.paint(SOFT, (np.abs(c.X) < 0.3) & (c.Y < -0.4), within=BONY)
  lab = c.labels
  if modality == 'CT' and part in CROSS_SECTIONS:
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
