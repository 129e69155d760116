"""Radiology-style captions: the words for each label and place, and the templates they fill."""

from __future__ import annotations

import numpy as np

from medclip_jax.data.synthetic.labels import LIMB_BODY_PARTS, MODALITY_SYNONYMS, pick

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


def _with_article(np_: str) -> str:
  return ('an ' if np_[:1].lower() in 'aeiou' else 'a ') + np_


def _finding_phrase(rng, labels: dict, place: str | None) -> tuple[str, str]:
  """(noun phrase with article, short form) for the finding."""
  modality, part = labels['modality'], labels['body_part']
  finding, side = labels['finding'], labels['laterality']
  if finding == 'normal':
    return pick(rng, _NORMAL), pick(rng, _NORMAL_SHORT)
  words = {
    'side': side if side != 'none' else '',
    'place': _PLACE_WORDS.get(place, place),
    'frac': pick(rng, ('', 'displaced ', 'nondisplaced ', 'acute ')),
    'blood': (pick(rng, _BLOOD_ADJ[modality]) + ' ').lstrip(),
  }
  where = _WHERE.get((part, place)) or _WHERE.get((part, None))
  words['where'] = (where or 'the {side} {place}').format(**words)
  if finding == 'mass':
    bone = place in _BONE_PLACES or part == 'spine'
    adj = pick(rng, (_BONE_MASS_ADJ if bone else _MASS_ADJ)[modality])
    noun = pick(rng, ('mass', 'lesion', 'tumor'))
    mass = _with_article(f'{adj} {noun}'.strip())
    phrase = f'{mass} in {words["where"]}'
  else:
    key = place if (part, place) in _PLACE_PHRASES else finding
    phrase = pick(rng, _PLACE_PHRASES[part, key]).format(**words)
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
    'mod': pick(rng, _MOD_NOUN[modality]),
    'view': pick(rng, views),
    'part': pick(rng, nouns).format(side=limb_side),
    'part_adj': pick(rng, adjectives).format(side=limb_side),
    'finding': finding,
    'short': short,
  }
  template = pick(rng, _TEMPLATES)
  for key in ('mod', 'view', 'part_adj', 'finding'):
    words[_cap(key)] = _cap(words[key])
  return ' '.join(template.format(**words).split())
