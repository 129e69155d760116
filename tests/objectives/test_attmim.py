"""AttMIM: the mask is the top share of the cells the caption attends to, the second image pass
sees exactly those patches blanked, and the loss trains both towers and its decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax import model as model_lib
from medclip_jax.data import pipeline
from medclip_jax.model import masking
from medclip_jax.model.clip import MedCLIP
from tests import helpers

# 64 px: a 2 x 2 grid (at 32 px the grid is one cell, and masking it blanks the image).
SETTINGS = {
  'data.image_size': 64,
  'model.image.ops': 'xla',
  'attmim.width': 16,
  'objectives.attmim': 1.0,
  'objectives.infonce': 0.0,
}


@pytest.fixture(scope='module')
def model_and_batch():
  config = helpers.step_config(SETTINGS)
  model = model_lib.build(config.model)
  batch = helpers.random_batch(config)
  images = pipeline.normalize(batch['image'], config.data.mean, config.data.std)
  variables = helpers.step_state(config).variables()
  return config, model, variables, images, batch


def test_the_mask_is_the_top_share_of_a_planted_attention_map(model_and_batch, monkeypatch):
  config, model, variables, images, batch = model_and_batch
  rows = len(images)
  planted = jax.random.uniform(jax.random.key(3), (rows, 4))
  monkeypatch.setattr(MedCLIP, 'text_to_cell_scores', lambda *args: planted)
  for ratio, count in ((0.25, 1), (0.5, 2), (0.75, 3)):
    outputs = model.apply(
      variables,
      images,
      batch['input_ids'],
      batch['attention_mask'],
      train=False,
      mim=masking.MaskSpec(ratio, 0.0, 0.1),
    )
    top = np.argsort(-np.asarray(planted), axis=1, kind='stable')[:, :count]
    expected = np.zeros((rows, 4), bool)
    np.put_along_axis(expected, top, True, axis=1)
    np.testing.assert_array_equal(outputs['mim_cells'], expected)
    # The second pass saw the image with exactly those 32 x 32 patches blanked.
    blanked = masking.mask_images(images, jnp.asarray(expected), (2, 2))
    _, grid = model.apply(
      variables, blanked, train=False, grid=True, method=lambda m, x, **kw: m.image_encoder(x, **kw)
    )
    np.testing.assert_allclose(outputs['mim_grid'], grid, atol=1e-5)


def test_the_caption_chooses_cells_in_the_shared_space(model_and_batch):
  config, model, variables, images, batch = model_and_batch
  outputs = model.apply(
    variables,
    images,
    batch['input_ids'],
    batch['attention_mask'],
    train=False,
    mim=masking.MaskSpec(0.5, 0.0, 0.1),
  )
  scores = model.apply(
    variables,
    outputs['image_grid'],
    outputs['text_tokens'],
    batch['attention_mask'],
    0.1,
    method=MedCLIP.text_to_cell_scores,
  )
  np.testing.assert_allclose(np.sum(scores, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(outputs['mim_cells'], masking.top_cells(scores, 0.5))
  # Another caption chooses other cells for some image.
  other = model.apply(
    variables,
    outputs['image_grid'],
    outputs['text_tokens'][::-1],
    batch['attention_mask'][::-1],
    0.1,
    method=MedCLIP.text_to_cell_scores,
  )
  assert not np.allclose(scores, other)


def test_its_gradient_reaches_both_towers_and_its_decoder():
  config = helpers.step_config(SETTINGS)
  values, _ = helpers.step_gradient(config, helpers.random_batch(config))
  assert values['metrics/attmim/mask_ratio'] == 0.5
  assert np.isfinite(values['loss']) and values['loss'] > 0
  for prefix in ('image_encoder/', 'text_encoder/', 'attmim_decoder/'):
    norm = sum(
      float(np.sum(np.square(v))) for k, v in values.items() if k.startswith(f'grads/{prefix}')
    )
    assert norm > 0, prefix
