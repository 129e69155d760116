"""EntMLM: the masked tokens, and only they, are scored; the loss trains both towers and its
decoder; the cap on scored tokens is counted."""

import numpy as np

from tests import helpers

SETTINGS = {'entmlm.width': 16, 'objectives.entmlm': 1.0, 'objectives.infonce': 0.0}


def norm(values, prefix):
  return sum(float(np.sum(np.square(v))) for k, v in values.items() if k.startswith(prefix))


def test_its_gradient_reaches_both_towers_and_its_decoder():
  config = helpers.step_config(SETTINGS)
  batch = helpers.random_batch(config, mlm=True)
  values, _ = helpers.step_gradient(config, batch)
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


def test_only_masked_tokens_are_scored():
  config = helpers.step_config(SETTINGS)
  batch = helpers.random_batch(config, mlm=True)
  base = helpers.step_gradient(config, batch)[0]['loss']
  # Nothing masked: nothing scored, nothing learnt.
  none = dict(
    batch, mlm_input_ids=batch['input_ids'], mlm_labels=np.full_like(batch['mlm_labels'], -1)
  )
  values = helpers.step_gradient(config, none)[0]
  assert values['loss'] == 0 and norm(values, 'grads/entmlm_decoder/') == 0
  # A masked token's label is read.
  first = np.argwhere(batch['mlm_labels'] >= 0)[0]
  labels = batch['mlm_labels'].copy()
  labels[tuple(first)] = (labels[tuple(first)] + 1) % 100
  assert helpers.step_gradient(config, dict(batch, mlm_labels=labels))[0]['loss'] != base


def test_masked_tokens_beyond_the_cap_are_counted_not_scored():
  config = helpers.step_config({**SETTINGS, 'entmlm.max_predictions': 0.02})
  batch = helpers.random_batch(config, mlm=True)
  values, _ = helpers.step_gradient(config, batch)
  cap = int(np.ceil(0.02 * config.train.batch_size * config.data.max_text_length))
  assert values['metrics/entmlm/unscored'] == (batch['mlm_labels'] >= 0).sum() - cap
  assert np.isfinite(values['loss'])
