"""Zero-shot: top-k of the nearest class prompt, and how prompt ensembles are filled."""

import numpy as np

from medclip_jax.evaluation import zeroshot


def test_zeroshot_metrics_skip_unknown_labels():
  image = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
  classes = np.array([[1, 0], [0, 1]], np.float32)
  r = zeroshot.zeroshot_metrics(image, np.array([0, 0, -1]), classes)
  assert r == {'top1': 0.5}  # no top3: only two classes


def test_prompts_average_over_the_other_fields_and_use_synonyms():
  vocabs = {'modality': ['CT', 'MRI'], 'body_part': ['brain', 'knee']}
  class_names = {'modality': {'CT': ('CT', 'computed tomography')}}
  prompts = zeroshot.prompts('modality', 'CT', ['{} of the {body_part}.'], vocabs, class_names)
  assert prompts == [
    'CT of the brain.',
    'CT of the knee.',
    'computed tomography of the brain.',
    'computed tomography of the knee.',
  ]
  assert zeroshot.prompts('body_part', 'knee', ['{} scan.'], vocabs, {}) == ['knee scan.']
