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

Everything is deterministic: example `i` of split `s` is drawn from
`numpy.random.default_rng([seed, crc32(s), i])`, independent of the order of
generation, and the images are encoded as PNG with fixed settings, so a seed
gives byte-identical files (with the same numpy, Pillow and zlib versions).

The package: `labels` (the label vocabularies and their sampling), `canvas`
(tissue-label maps and the shapes drawn on them), `anatomy` (each body part in
its views, with the findings), `modalities` (how each modality frames and
shows the tissues), `captions` and `examples` (seeding, encoding, records).
"""

from medclip_jax.data.synthetic.canvas import BLOOD, MASS
from medclip_jax.data.synthetic.captions import caption
from medclip_jax.data.synthetic.examples import encode_png, generate, make_example
from medclip_jax.data.synthetic.labels import (
  BODY_PART_SYNONYMS,
  BODY_PARTS,
  FINDING_SYNONYMS,
  FINDINGS,
  LABELS,
  LATERALITIES,
  MODALITIES,
  MODALITY_SYNONYMS,
  WORDS,
  names,
  sample_labels,
)
from medclip_jax.data.synthetic.modalities import render, tissue_map

__all__ = [
  'BLOOD',
  'BODY_PARTS',
  'BODY_PART_SYNONYMS',
  'FINDINGS',
  'FINDING_SYNONYMS',
  'LABELS',
  'LATERALITIES',
  'MASS',
  'MODALITIES',
  'MODALITY_SYNONYMS',
  'WORDS',
  'caption',
  'encode_png',
  'generate',
  'make_example',
  'names',
  'render',
  'sample_labels',
  'tissue_map',
]
