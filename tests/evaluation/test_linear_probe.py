"""Linear probe: seeded label fractions with every class, C chosen on val, scored on the split."""

import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.evaluation import build_evaluators
from medclip_jax.evaluation import linear_probe
from tests import helpers


def test_a_fraction_of_the_labels_keeps_one_of_every_class_and_is_seeded():
  labels = np.array([0] * 90 + [1] * 9 + [2] + [-1] * 5)
  rows = linear_probe.sample_labelled(labels, 0.01, seed=3)
  assert set(labels[rows]) == {0, 1, 2} and -1 not in labels[rows]
  assert len(rows) <= 1 + 2  # 1% of 100 is one row, topped up with the missing classes
  np.testing.assert_array_equal(rows, linear_probe.sample_labelled(labels, 0.01, seed=3))
  assert len(linear_probe.sample_labelled(labels, 1.0, seed=0)) == 100


def _clusters(name, n, seed, noise):
  """Unit vectors near one of three axes; the label is the axis."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  x = np.eye(3)[labels] + noise * rng.normal(size=(n, 3))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return helpers.encoded_split(
    name, x, labels={'region': labels}, vocabs={'region': ['a', 'b', 'c']}
  )


def test_the_probe_learns_separable_features_at_every_fraction():
  splits = {name: _clusters(name, 300, seed, 0.2) for seed, name in enumerate(('train', 'val'))}
  test = _clusters('test', 200, 5, 0.2)
  evaluator = linear_probe.Evaluator(fractions=(0.05, 1.0), Cs=(0.1, 10.0))
  out = evaluator(None, test, helpers.FakeEmbedder({**splits, 'test': test}))
  for fraction in ('5%', '100%'):
    assert out[f'region.{fraction}.accuracy'] > 0.95
    assert out[f'region.{fraction}.balanced_accuracy'] > 0.95
    assert out[f'region.{fraction}.auroc'] > 0.99
  assert out['region.5%.train_examples'] == 15 and out['region.100%.train_examples'] == 300
  table = out['details']['table']['region']
  assert list(table) == ['5%', '100%'] and table['100%']['C'] in (0.1, 10.0)


def test_without_a_val_split_c_is_one():
  train, test = _clusters('train', 100, 0, 0.1), _clusters('test', 50, 1, 0.1)
  out = linear_probe.Evaluator(fractions=(1.0,))(None, test, helpers.FakeEmbedder({'train': train}))
  assert out['details']['table']['region']['100%']['C'] == 1.0


def test_c_is_not_chosen_on_the_split_it_is_scored_on():
  splits = {name: _clusters(name, 100, seed, 0.1) for seed, name in enumerate(('train', 'val'))}
  evaluator = linear_probe.Evaluator(fractions=(1.0,), Cs=(0.01, 100.0))
  embedder = helpers.FakeEmbedder(splits)
  assert evaluator(None, splits['val'], embedder)['details']['table']['region']['100%']['C'] == 1.0
  test = _clusters('test', 50, 5, 0.1)
  embedder = helpers.FakeEmbedder({**splits, 'test': test})
  assert evaluator(None, test, embedder)['details']['table']['region']['100%']['C'] in (0.01, 100.0)


def test_bad_fractions_are_user_errors():
  with pytest.raises(UserError, match=r'config.evals.probe: fractions must lie in \(0, 1\]'):
    build_evaluators({'probe': {'type': 'linear_probe', 'fractions': (0.0, 1.0)}})


def test_a_field_with_one_training_class_is_skipped_with_a_warning_naming_it(caplog):
  """A label every training record shares (one modality) cannot train a classifier; the
  other fields are still scored, rather than the evaluation failing."""

  def split(name, n, seed):
    clusters = _clusters(name, n, seed, 0.1)
    modality = np.zeros(n, int) if name == 'train' else np.arange(n) % 2
    return helpers.encoded_split(
      name,
      clusters.image,
      labels={**clusters.labels, 'modality': modality},
      vocabs={**clusters.vocabs, 'modality': ['X-ray', 'CT']},
    )

  splits = {name: split(name, 60, seed) for seed, name in enumerate(('train', 'val', 'test'))}
  evaluator = linear_probe.Evaluator(fractions=(0.1, 1.0), Cs=(1.0, 10.0))
  out = evaluator(None, splits['test'], helpers.FakeEmbedder(splits))
  assert out['region.100%.accuracy'] > 0.9
  assert not any(key.startswith('modality.') for key in out)
  assert list(out['details']['table']) == ['region']
  assert (
    "'modality' is not scored: every labelled record of the 'train' split is 'X-ray'"
  ) in caplog.text


def test_a_field_the_evaluated_split_does_not_label_is_skipped_with_a_warning(caplog):
  train = _clusters('train', 60, 0, 0.1)
  test = helpers.encoded_split(
    'test', train.image, labels={'region': np.full(60, -1)}, vocabs=train.vocabs
  )
  out = linear_probe.Evaluator(fractions=(1.0,))(None, test, helpers.FakeEmbedder({'train': train}))
  assert out == {'details': {'table': {}}}
  assert "'region' is not scored: no record of the 'test' split is labelled with it" in caplog.text


def test_a_field_the_dataset_lacks_is_warned_of_not_dropped_silently():
  from medclip_jax.evaluation import finetune  # pylint: disable=import-outside-toplevel

  vocabs = {'finding': ['mass', 'normal'], 'modality': ['CT', 'MR']}
  for evaluator in (
    linear_probe.Evaluator(fields=('findings',)),
    finetune.Evaluator(fields=('findings',)),
  ):
    (warning,) = evaluator.unmatched(vocabs)
    assert "fields ['findings'] match no label" in warning and 'finding, modality' in warning
  assert linear_probe.Evaluator(fields=('finding',)).unmatched(vocabs) == []
