"""The body parts, each drawn in its views on a `Canvas` with the finding in.

Each function draws one body part in one view, with the finding on side `sx`
(-1: patient's right = image left, +1: left), and returns the place of the
finding (named in the caption, see captions._PLACE_PHRASES) or None.

Views: axial sections of the brain, chest, abdomen and pelvis, a sagittal
lumbar spine, and coronal / frontal knee and hand; X-ray shows projections
instead (PA skull, PA chest, supine abdomen, AP pelvis; lateral spine, AP knee,
PA hand).

Findings: mass = round lesion (bright on CT/MRI, hypoechoic on ultrasound,
lytic in bone); fracture = dark (MRI: bright oedema) line through a bone,
often with soft-tissue swelling; effusion = fluid layer or collection with a flat or
crescentic edge in a body cavity or joint; hemorrhage = irregular clot, or a
crescent over the brain (bright on CT, dark on MRI, echogenic on ultrasound).
"""

from __future__ import annotations

import math

import numpy as np

from medclip_jax.data.synthetic.canvas import (
  AIR,
  BLOOD,
  BONE,
  BONY,
  DISC,
  FAT,
  FLUID,
  FRACTURE,
  GAS,
  GREY,
  KIDNEY,
  LIGAMENT,
  LUNG,
  MARROW,
  ORGAN,
  SOFT,
  WHITE,
  arc,
  blob,
  fracture,
  mass,
)
from medclip_jax.data.synthetic.labels import pick


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
    place = pick(rng, ['frontal lobe', 'parietal lobe', 'temporal lobe', 'occipital lobe'])
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
    mass(c, sx * x, y, r, rng, within=brain)
    return place
  if finding == 'fracture':
    place = pick(rng, ['frontal bone', 'parietal bone', 'occipital bone'])
    a = {'frontal bone': -65, 'parietal bone': rng.uniform(-15, 15), 'occipital bone': 65}[place]
    t = math.radians(a)
    ux, uy = math.cos(t), math.sin(t)
    p0 = (sx * (rx - 0.1) * ux, (ry - 0.1) * uy)
    p1 = (sx * (rx + 0.12) * ux, (ry + 0.12) * uy + 0.07)
    fracture(c, p0, p1)
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
    place = pick(rng, ['frontal lobe', 'parietal lobe'])
    y = cy - 0.25 if place == 'frontal lobe' else cy + 0.1
    mass(c, sx * 0.3, y, rng.uniform(0.13, 0.18), rng, within=(GREY, MARROW))
    return place
  if finding == 'fracture':
    place = 'parietal bone'
    y0 = cy + rng.uniform(-0.45, -0.15)
    fracture(
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
    c.line(BONE, arc(0, cy, rx - 0.13, ry - 0.1, a0, a0 + 20, 5), 0.06)
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
    place = pick(rng, ['upper lobe', 'lower lobe'])
    y = cy + (-0.15 if place == 'upper lobe' else 0.15)
    mass(c, sx * rng.uniform(0.35, 0.45), y, rng.uniform(0.1, 0.15), rng, within=(LUNG, SOFT))
    return place
  if finding == 'fracture':
    a = math.radians(rng.uniform(150, 200) if sx < 0 else rng.uniform(-20, 30))
    x, y = (rx - 0.13) * math.cos(a), cy + (ry - 0.1) * math.sin(a)
    fracture(c, (x * 0.85, y - 0.06), (x * 1.1, y + 0.06), swelling=(x * 1.08, y, 0.1), rng=rng)
    c.ellipse(SOFT, x * 1.02, y, 0.08, 0.06, within=(FAT,))
    return 'rib'
  if finding == 'effusion':
    level = cy + rng.uniform(0.05, 0.18)  # dependent layer
    c.paint(FLUID, (c.Y > level) & (c.X * sx > 0.1), within=(LUNG,))
    return 'pleural'
  if finding == 'hemorrhage':
    place = pick(rng, ['upper lobe', 'lower lobe'])
    y = cy + (-0.15 if place == 'upper lobe' else 0.15)
    blob(c, BLOOD, sx * 0.4, y, rng.uniform(0.16, 0.22), rng, within=(LUNG, SOFT))
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
    place = pick(rng, ['upper lobe', 'lower lobe'])
    y = -0.45 if place == 'upper lobe' else 0.05
    mass(c, sx * 0.5, y, rng.uniform(0.11, 0.15), rng, within=(LUNG, BONE))
    return place
  if finding == 'fracture':
    k = rng.integers(3, 7)
    y = -0.75 + k * 0.15
    x = sx * rng.uniform(0.65, 0.75)
    fracture(c, (x - 0.02, y - 0.15), (x + 0.02, y + 0.15))
    c.ellipse(SOFT, sx * 0.93, y, 0.08, 0.1, within=(AIR,))
    return 'rib'
  if finding == 'effusion':
    level = dome - rng.uniform(0.1, 0.35)
    m = (c.Y > level - 0.25 * (c.X * sx - 0.45).clip(0)) & (c.X * sx > 0.08)
    c.paint(FLUID, m, within=(LUNG, BONE))
    return 'pleural'
  if finding == 'hemorrhage':
    place = pick(rng, ['upper lobe', 'lower lobe'])
    y = -0.4 if place == 'upper lobe' else 0.05
    blob(c, BLOOD, sx * 0.5, y, rng.uniform(0.2, 0.26), rng, within=(LUNG, BONE, SOFT))
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
    place = pick(rng, ['organ', 'kidney'])
    if place == 'kidney':
      x, y = kidneys[int(sx)]
      r = 0.09
    else:
      x, y = organ[0] + sx * 0.05, organ[1]
      r = 0.12 if sx < 0 else 0.1
      place = 'liver' if sx < 0 else 'spleen'
    if finding == 'mass':
      mass(c, x, y, r, rng, within=(ORGAN, KIDNEY, FAT))
    else:
      blob(c, BLOOD, x, y, r * 1.4, rng, within=(ORGAN, KIDNEY, FAT))
    return place
  if finding == 'fracture':
    t = math.radians(rng.choice([160, 200]) if sx < 0 else rng.choice([20, 340]))
    x, y = (rx - 0.13) * math.cos(t), cy + (ry - 0.12) * math.sin(t)
    fracture(c, (x - 0.01, y - 0.08), (x + 0.01, y + 0.08), swelling=(x * 1.06, y, 0.13), rng=rng)
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
    mass(c, sx * 0.55, -0.35, rng.uniform(0.18, 0.24), rng, within=(SOFT, GAS, ORGAN, FAT))
    return place
  if finding == 'hemorrhage':
    place = 'liver' if sx < 0 else 'spleen'
    blob(c, BLOOD, sx * 0.55, -0.35, rng.uniform(0.25, 0.3), rng, within=(SOFT, GAS, ORGAN, FAT))
    return place
  if finding == 'fracture':
    y = rng.choice(ys[1:4])
    fracture(c, (sx * 0.2, y - 0.07), (sx * 0.22, y + 0.09))
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
    mass(c, sx * 0.28, cy + 0.02, rng.uniform(0.1, 0.13), rng, within=(FAT, SOFT, FLUID))
    return place
  if finding == 'fracture':
    place = pick(rng, ['acetabulum', 'proximal femur'])
    if place == 'acetabulum':
      fracture(c, (hx - sx * 0.2, hy - 0.12), (hx - sx * 0.26, hy + 0.12))
    else:
      fracture(c, (hx - 0.05, hy - 0.16), (hx + 0.05, hy + 0.16))
    return place
  if finding == 'effusion':
    m = c.ellipse_mask(hx + sx * 0.05, hy, 0.27, 0.25)
    c.paint(FLUID, m, within=(DISC, SOFT, FAT))
    return 'hip joint'
  if finding == 'hemorrhage':
    blob(c, BLOOD, sx * 0.3, cy + 0.05, rng.uniform(0.15, 0.2), rng, within=(FAT, SOFT, FLUID))
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
    mass(c, sx * 0.58, -0.55, rng.uniform(0.12, 0.16), rng, within=(MARROW,))
    return 'iliac wing'
  if finding == 'fracture':
    place = pick(rng, ['femoral neck', 'pubic ramus', 'iliac wing'])
    if place == 'femoral neck':
      (x0, y0), (x1, y1) = necks[int(sx)]
      x, y = (x0 + x1) / 2, (y0 + y1) / 2
      fracture(c, (x - sx * 0.1, y + 0.1), (x + sx * 0.1, y - 0.1))
    elif place == 'pubic ramus':
      fracture(c, (sx * 0.2, 0.3), (sx * 0.24, 0.48))
    else:
      fracture(c, (sx * 0.45, -0.95), (sx * 0.62, -0.4))
    return place
  if finding == 'effusion':
    hx, hy = sx * 0.58, 0.2
    m = c.ellipse_mask(hx + sx * 0.08, hy + 0.02, 0.26, 0.24)
    c.paint(FLUID, m, within=(SOFT,))
    return 'hip joint'
  if finding == 'hemorrhage':
    blob(
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
      within=BONY,
    )
    c.line(
      FRACTURE,
      [(x - 0.2, y - h / 2 + drop + 0.02), (x + 0.2, y - h / 2 + drop * 0.4 + 0.02)],
      0.05,
      within=BONY,
    )
    return _LEVELS[k - 1]
  if finding == 'mass':
    k = int(rng.integers(1, 6))
    x, y = xc(ys[k]), ys[k]
    mass(c, x + 0.02, y, rng.uniform(0.08, 0.11), rng, within=BONY)
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
    place = pick(rng, ['tibial plateau', 'distal femur', 'proximal fibula'])
    if place == 'tibial plateau':
      fracture(c, (-0.36, 0.32), (0.02, 0.11))
    elif place == 'distal femur':
      fracture(c, (-0.35, -0.3), (0.35, -0.45))
    else:
      fracture(c, (-0.48, 0.48), (-0.33, 0.42))
    c.ellipse(SOFT, -0.6, 0.2, 0.1, 0.3, within=(AIR, FAT))
    return place
  if finding == 'mass':
    place = pick(rng, ['distal femur', 'proximal tibia'])
    y = -0.4 if place == 'distal femur' else 0.35
    mass(c, rng.uniform(-0.05, 0.05), y, rng.uniform(0.11, 0.14), rng, within=BONY)
    return place
  if finding == 'effusion':
    for s in (-1, 1):
      c.ellipse(FLUID, s * 0.42, -0.3, 0.1, 0.25, within=(SOFT, FAT, LIGAMENT))
    c.ellipse(FLUID, 0, -0.5, 0.42, 0.1, within=(SOFT,))
    return 'joint'
  if finding == 'hemorrhage':
    place = pick(rng, ['thigh', 'calf'])
    y = -0.75 if place == 'thigh' else 0.75
    blob(c, BLOOD, rng.choice([-1, 1]) * 0.35, y, rng.uniform(0.16, 0.2), rng, within=(SOFT, FAT))
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
    place = pick(rng, ['fifth metacarpal', 'distal radius', 'proximal phalanx'])
    if place == 'fifth metacarpal':
      (x0, y0), (x1, y1) = bones[('meta', 3)]
    elif place == 'proximal phalanx':
      (x0, y0), (x1, y1) = bones[('phal', 0, 0)]
    else:
      (x0, y0), (x1, y1) = (-0.17, 0.85), (-0.17, 0.6)
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    fracture(c, (x - 0.14, y - 0.03), (x + 0.14, y + 0.03))
    return place
  if finding == 'mass':
    place = pick(rng, ['thenar eminence', 'palm'])
    x, y = (-0.36, 0.2) if place == 'thenar eminence' else (0.1, 0.12)
    mass(c, x, y, rng.uniform(0.11, 0.14), rng, within=(SOFT, BONE, MARROW))
    return place
  if finding == 'effusion':
    m = c.ellipse_mask(-0.03, 0.4, 0.4, 0.17)
    c.paint(FLUID, m, within=(SOFT, AIR))
    return 'wrist'
  if finding == 'hemorrhage':
    place = pick(rng, ['thenar eminence', 'palm'])
    x, y = (-0.4, 0.22) if place == 'thenar eminence' else (0.15, 0.1)
    blob(c, BLOOD, x, y, rng.uniform(0.16, 0.2), rng, within=(SOFT, AIR))
    return place
  return None


# (body part, projection?) -> drawing function. Projection views are used
# for X-ray; the others for CT, MRI and ultrasound.
ANATOMY = {
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
CROSS_SECTIONS = ('brain', 'chest', 'abdomen', 'pelvis')
