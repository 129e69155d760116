"""The labels of the synthetic dataset, the words captions use for them, and their sampling."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

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


def pick(rng, options: Sequence[str]) -> str:
  """One of `options`, uniformly, from a single integer draw of `rng`."""
  return options[int(rng.integers(len(options)))]


def sample_labels(rng: np.random.Generator) -> dict[str, str]:
  """Draws modality, body part and finding uniformly, then the laterality."""
  labels = {
    'modality': pick(rng, MODALITIES),
    'body_part': pick(rng, BODY_PARTS),
    'finding': pick(rng, FINDINGS),
  }
  if labels['finding'] == 'normal' or labels['body_part'] in MIDLINE_BODY_PARTS:
    labels['laterality'] = 'none'
  else:
    labels['laterality'] = pick(rng, ('left', 'right'))
  return labels


# The words of every label value, by label (laterality 'none' has none).
WORDS = {
  'modality': MODALITY_SYNONYMS,
  'body_part': BODY_PART_SYNONYMS,
  'finding': FINDING_SYNONYMS,
  'laterality': {'left': ('left',), 'right': ('right',), 'none': ()},
}


def names(text: str, label: str, value: str) -> bool:
  """Whether `text` says `value` of `label` in one of the captions' words for it (whole
  words, any case), e.g. names('Axial MR of the head.', 'modality', 'MRI')."""
  return any(
    re.search(r'(?<![\w-])' + re.escape(word) + r'(?![\w-])', text, re.IGNORECASE)
    for word in WORDS[label][value]
  )
