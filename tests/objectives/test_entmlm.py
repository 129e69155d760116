"""EntMLM: the masked tokens, and only they, are scored; the loss trains both towers and its
decoder; the cap on scored tokens is counted."""

import numpy as np
import pytest

from tests import helpers

SETTINGS = {'entmlm.width': 16, 'objectives.entmlm': 1.0, 'objectives.infonce': 0.0}


def norm(values, prefix):
  return sum(float(np.sum(np.square(v))) for k, v in values.items() if k.startswith(prefix))


@pytest.fixture(scope='module')
def gradient():
  """(config, a batch, batch -> the step's gradient values), compiled once."""
  config = helpers.step_config(SETTINGS)
  batch = helpers.random_batch(config, mlm=True)
  return config, batch, helpers.step_gradient_fn(config, batch)[0]


def test_its_gradient_reaches_both_towers_and_its_decoder(gradient):
  _, batch, values_of = gradient
  values = values_of(batch)
  masked = batch['mlm_labels'] >= 0
  maskable = batch['attention_mask'].sum() - 2 * len(masked)
  np.testing.assert_allclose(
    values['metrics/entmlm/mask_ratio'], masked.sum() / maskable, rtol=1e-6
  )
  assert values['metrics/entmlm/with_entity'] == 0.5
  assert values['metrics/entmlm/unscored'] == 0
  # Chance over a 100-token vocabulary is ln(100) = 4.6.
  assert 3 < values['loss'] < 7
  for prefix in ('image_encoder/', 'text_encoder/', 'entmlm_decoder/'):
    assert norm(values, f'grads/{prefix}') > 0, prefix


def test_only_masked_tokens_are_scored(gradient):
  _, batch, values_of = gradient
  base = values_of(batch)['loss']
  # Nothing masked: nothing scored, nothing learnt.
  none = dict(
    batch, mlm_input_ids=batch['input_ids'], mlm_labels=np.full_like(batch['mlm_labels'], -1)
  )
  values = values_of(none)
  assert values['loss'] == 0 and norm(values, 'grads/entmlm_decoder/') == 0
  # A masked token's label is read.
  first = np.argwhere(batch['mlm_labels'] >= 0)[0]
  labels = batch['mlm_labels'].copy()
  labels[tuple(first)] = (labels[tuple(first)] + 1) % 100
  assert values_of(dict(batch, mlm_labels=labels))['loss'] != base


def test_masked_tokens_beyond_the_cap_are_counted_not_scored():
  config = helpers.step_config({**SETTINGS, 'entmlm.max_predictions': 0.02})
  batch = helpers.random_batch(config, mlm=True)
  values, _ = helpers.step_gradient(config, batch)
  cap = int(np.ceil(0.02 * config.train.batch_size * config.data.max_text_length))
  assert values['metrics/entmlm/unscored'] == (batch['mlm_labels'] >= 0).sum() - cap
  assert np.isfinite(values['loss'])


def test_a_locked_text_towers_cached_features_stand_in_for_its_unmasked_pass():
  # EntMLM alone needs the masked captions' states only: with the text tower locked, its
  # cached features still give InfoNCE its text embeddings (Setup.locked_text_features).
  config = helpers.step_config(
    {**SETTINGS, 'objectives.infonce': 1.0, 'train.lr_multipliers.text_encoder': 0.0}
  )
  batch = helpers.random_batch(config, text_features=True, mlm=True)
  values, _ = helpers.step_gradient(config, batch)
  assert np.isfinite(values['metrics/loss/infonce']) and np.isfinite(values['metrics/loss/entmlm'])
  assert norm(values, 'grads/text_projection/') > 0  # InfoNCE through the cached features
  assert norm(values, 'grads/text_encoder/') == 0 and norm(values, 'grads/image_encoder/') > 0
  other = dict(batch, text_features=batch['text_features'][::-1].copy())
  assert (
    helpers.step_gradient(config, other)[0]['metrics/loss/infonce']
    != values['metrics/loss/infonce']
  )
