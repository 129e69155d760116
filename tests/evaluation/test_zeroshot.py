"""Zero-shot: top-k of the nearest class prompt, and how prompt ensembles are filled."""

import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.evaluation import build_evaluators
from medclip_jax.evaluation import zeroshot
from tests import helpers


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


def _vector(text):
  """Prompts embed by the words in them: the planted images sit near 'mass' or 'normal'."""
  return [
    1.0 * ('mass' in text and 'no mass' not in text),
    1.0 * ('normal' in text and 'no normal' not in text),
    1.0 * text.startswith('no '),
    0.1,
  ]


def test_the_evaluator_reports_per_class_scores_confusion_and_chexzero_auroc():
  image = np.array(
    [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [0.2, 0.8, 0, 0], [0.6, 0.4, 0, 0]]
  )
  split = helpers.encoded_split(
    'test',
    image=image / np.linalg.norm(image, axis=1, keepdims=True),
    labels={'finding': [0, 0, 1, 1, 1]},
    vocabs={'finding': ['mass', 'normal']},
  )
  evaluator = zeroshot.Evaluator(
    templates={'finding': ['{}']}, auroc={'finding': ('{}', 'no {}')}, bootstrap=200
  )
  variables = {'params': {'logit_scale': np.log(10.0)}}
  out = evaluator(variables, split, helpers.FakeEmbedder({}, _vector))
  # Image 4 (0.6 mass, 0.4 normal) is a 'normal' called 'mass'.
  assert out['finding.top1'] == 0.8
  assert out['finding.accuracy.mass'] == 1.0 and out['finding.accuracy.normal'] == 2 / 3
  assert out['finding.balanced_accuracy'] == (1.0 + 2 / 3) / 2
  details = out['details']['fields']['finding']
  assert details['confusion'] == [[2, 0], [1, 2]] and details['support'] == [2, 3]
  # The pair softmax ranks the images by 'mass' minus 'no mass': a perfect ranking here.
  assert out['finding.auroc.mass'] == 1.0 and out['finding.auroc'] == 1.0
  assert out['finding.auroc_low.mass'] <= 1.0 == out['finding.auroc_high.mass']
  assert details['auroc']['normal']['auroc'] == 1.0


def test_auroc_prompts_must_be_a_pair():
  with pytest.raises(ValueError, match='positive template, negative template'):
    zeroshot.Evaluator(auroc={'finding': ('{}',)})


def test_default_templates_score_every_label_field_the_templates_do_not_name():
  image = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
  split = helpers.encoded_split(
    'test',
    image=image,
    labels={'finding': [0, 1], 'region': [1, 0]},
    vocabs={'finding': ['mass', 'normal'], 'region': ['normal', 'mass']},
  )
  evaluator = zeroshot.Evaluator(templates={'finding': ['no {}']}, default_templates=['{}'])
  out = evaluator({}, split, helpers.FakeEmbedder({}, _vector))
  assert out['region.top1'] == 1.0  # scored with the default '{}'
  assert out['finding.top1'] == 0.5  # its own 'no {}' prompts tell nothing apart


def test_fields_the_dataset_does_not_label_are_a_warning_naming_those_it_has():
  evaluator = zeroshot.Evaluator(
    templates={'modality': ['{}'], 'region': ['{}']}, auroc={'finding': ('{}', 'no {}')}
  )
  (warning,) = evaluator.unmatched({'region': ['head'], 'view': ['axial']})
  assert warning.startswith("zero-shot fields ['finding', 'modality'] match no label")
  assert '(its label fields: region, view)' in warning
  assert evaluator.unmatched({'modality': [], 'region': [], 'finding': []}) == []


def test_a_field_the_split_does_not_label_is_skipped_with_a_warning(caplog):
  image = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
  split = helpers.encoded_split(
    'val',
    image=image,
    labels={'finding': [-1, -1], 'region': [1, 0]},
    vocabs={'finding': ['mass', 'normal'], 'region': ['normal', 'mass']},
  )
  evaluator = zeroshot.Evaluator(default_templates=['{}'], auroc={'finding': ('{}', 'no {}')})
  out = evaluator({}, split, helpers.FakeEmbedder({}, _vector))
  assert out['region.top1'] == 1.0
  assert not any(key.startswith('finding.') for key in out)
  assert list(out['details']['fields']) == ['region']
  assert "no record of the 'val' split is labelled with 'finding'; it is not scored" in caplog.text


def test_templates_naming_a_field_the_dataset_lacks_are_not_used_and_said_so():
  """Templates written for one dataset ('{} of the {body_part}.') meet another without that
  label: the field is scored with its other templates, or not at all."""
  image = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
  vocabs = {'finding': ['mass', 'normal'], 'region': ['normal', 'mass']}
  split = helpers.encoded_split(
    'test', image=image, labels={'finding': [0, 1], 'region': [1, 0]}, vocabs=vocabs
  )
  evaluator = zeroshot.Evaluator(
    templates={'finding': ['{} of the {body_part}.', '{}'], 'region': ['{} in the {view}.']},
    auroc={'finding': ('{} of the {body_part}.', 'no {}')},
  )
  embedder = helpers.FakeEmbedder({}, _vector)
  out = evaluator({}, split, embedder)
  assert out['finding.top1'] == 1.0 and 'finding.auroc' not in out
  assert embedder.encoded == [['mass', 'normal']]  # only the fillable template
  assert not any(key.startswith('region.') for key in out)
  unused, unscored = evaluator.unmatched(vocabs)
  assert unused == (
    "zero-shot templates ['{} in the {view}.', '{} of the {body_part}.'] name label fields the "
    'dataset lacks (its label fields: finding, region); they are not used, nor AUROC prompt '
    'pairs holding them'
  )
  assert unscored == "zero-shot fields ['region'] are left without templates; they are not scored"
  assert evaluator.unmatched({**vocabs, 'body_part': ['head'], 'view': ['axial']}) == []


def test_bootstrap_zero_gives_the_auroc_without_an_interval():
  image = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.9, 0.1, 0, 0]], dtype=float)
  split = helpers.encoded_split(
    'test', image=image, labels={'finding': [0, 1, 0]}, vocabs={'finding': ['mass', 'normal']}
  )
  evaluator = zeroshot.Evaluator(
    templates={'finding': ['{}']}, auroc={'finding': ('{}', 'no {}')}, bootstrap=0
  )
  out = evaluator({'params': {'logit_scale': 0.0}}, split, helpers.FakeEmbedder({}, _vector))
  assert out['finding.auroc.mass'] == 1.0 and out['finding.auroc'] == 1.0
  assert not any(key.startswith(('finding.auroc_low', 'finding.auroc_high')) for key in out)
  with pytest.raises(UserError, match='config.evals.zeroshot: bootstrap must be 0'):
    build_evaluators({'zeroshot': {'type': 'zeroshot', 'bootstrap': -1}})
