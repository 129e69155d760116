"""Gradient caching (config.train.grad_cache_chunks): the plain step's loss and gradients on 1
and 8 devices and with a locked text tower's cached features; less memory; BatchNorm's
running statistics; chunks that do not divide a device's rows."""

import json

import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.training import checkpointing
from medclip_jax.training import checks
from medclip_jax.training import setup
from tests import helpers

# Every case has the same model and objectives, so the initial parameters compile once.
# Dropout off: the plain step draws one mask over the whole batch, gradient caching one per
# chunk, so with dropout the two are different (equally valid) samples. Both objectives: the
# sigmoid loss's bias gets its gradient from the loss over the whole batch (weight 0.1 keeps
# gradients below ~10, where float32 rounding stays well under the 1e-5 compared). XLA's own
# convolutions compute what the CPU ones (model/cpu_ops.py) do and compile in half the time.
BASE = {'model.text.dropout_rate': 0.0, 'objectives.sigmoid': 0.1, 'model.image.ops': 'xla'}
# The image tower locked: its BatchNorm runs on running statistics and couples no rows, so
# chunking changes nothing the plain step computes, while the text tower, the projections,
# the logit scale and the bias train. 32 rows: 4 per device on 8 devices, 1 per chunk.
LOCKED_IMAGE = {**BASE, 'train.lr_multipliers.image_encoder': 0.0, 'train.batch_size': 32}
CHUNKS = {'train.grad_cache_chunks': 4}

_EIGHT_DEVICES = """
import numpy as np
from tests import helpers
config = helpers.step_config({**%r, 'mesh.data': 4, 'mesh.fsdp': 2})
np.savez(%r, **helpers.step_gradient(config, helpers.random_batch(config))[0])
"""


def gradient(overrides, **batch_options):
  """(values, compiled) of the step's gradient at `overrides` (helpers.step_gradient)."""
  config = helpers.step_config(overrides)
  return helpers.step_gradient(config, helpers.random_batch(config, **batch_options))


def assert_same(got: dict, want: dict, what: str):
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-5, err_msg=f'{what}: {key}')


def largest(values: dict, prefix: str) -> float:
  return max(float(np.abs(v).max()) for k, v in values.items() if k.startswith(prefix))


@pytest.fixture(scope='module')
def plain():
  """The plain step's loss, metrics, BatchNorm statistics and gradients, on one device."""
  return gradient(LOCKED_IMAGE)[0]


def test_grad_cache_gives_the_plain_loss_and_gradients(plain):
  assert_same(gradient({**LOCKED_IMAGE, **CHUNKS})[0], plain, '4 chunks')
  # What is compared is learnt: gradients reach every trained group.
  for prefix in ('text_encoder/', 'image_projection/', 'text_projection/', 'logit_'):
    assert largest(plain, f'grads/{prefix}') > 1e-3, prefix


def test_grad_cache_on_8_devices_gives_the_plain_loss_and_gradients_of_one(plain, tmp_path):
  # The batch split over both mesh axes; each chunk takes rows of every device's own.
  path = str(tmp_path / 'eight.npz')
  helpers.run_on_devices(8, _EIGHT_DEVICES % ({**LOCKED_IMAGE, **CHUNKS}, path))
  assert_same(dict(np.load(path)), plain, '8 devices, 4 chunks')


def test_grad_cache_takes_a_locked_text_towers_cached_features():
  # Both towers locked and the text tower's features given (Setup.locked_text_features):
  # the projections and the logit scale learn from them.
  locked = {**LOCKED_IMAGE, 'train.lr_multipliers.text_encoder': 0.0}
  plain = gradient(locked, text_features=True)[0]
  assert_same(gradient({**locked, **CHUNKS}, text_features=True)[0], plain, 'features')
  assert largest(plain, 'grads/text_projection/') > 1e-3
  assert largest(plain, 'grads/text_encoder/') == 0


@pytest.fixture(scope='module')
def trained_image_tower():
  """{chunks: (values, compiled gradient)} with the image tower training (the text tower
  locked, its features given), at a batch (64 rows of 32 px) where the ResNet's
  activations dominate the step's memory."""
  overrides = {**BASE, 'train.lr_multipliers.text_encoder': 0.0, 'train.batch_size': 64}
  return {
    c: gradient({**overrides, 'train.grad_cache_chunks': c}, text_features=True) for c in (0, 4)
  }


def test_grad_cache_needs_much_less_memory_than_the_plain_gradient(trained_image_tower):
  plain, cached = (trained_image_tower[c][1].memory_analysis() for c in (0, 4))
  # One chunk's activations are kept for the backward pass, not the whole batch's.
  assert cached.temp_size_in_bytes < 0.6 * plain.temp_size_in_bytes, (
    cached.temp_size_in_bytes,
    plain.temp_size_in_bytes,
  )


def test_batchnorm_statistics_move_by_the_chunks_mean_update(trained_image_tower):
  plain, cached = (trained_image_tower[c][0] for c in (0, 4))
  # The stem's input does not depend on the chunking: the mean of the chunks' means is the
  # batch's mean, the mean of their variances the batch's variance less the variance of
  # the chunks' means.
  stem = 'batch_stats/image_encoder/bn1/'
  np.testing.assert_allclose(cached[f'{stem}mean'], plain[f'{stem}mean'], rtol=0, atol=1e-6)
  assert np.all(cached[f'{stem}var'] <= plain[f'{stem}var'] + 1e-6)
  assert np.abs(cached[f'{stem}var'] - plain[f'{stem}var']).max() > 1e-5
  # Deeper layers see chunk-normalised inputs; every statistic moved from its start (mean
  # 0, variance 1) and is finite, and the image tower learns.
  for key, value in cached.items():
    if key.startswith('batch_stats/'):
      start = 0.0 if key.endswith('/mean') else 1.0
      assert np.all(np.isfinite(value)) and np.abs(value - start).max() > 0, key
  assert largest(cached, 'grads/image_encoder/') > 1e-3


def test_chunks_that_do_not_divide_a_devices_rows_are_a_user_error():
  config = helpers.step_config({'train.batch_size': 32, 'train.grad_cache_chunks': 3})
  with pytest.raises(UserError, match=r'=3 does not divide the per-device batch of 32 rows'):
    setup.Setup.create(config)
  # 32 rows over 8 devices are 4 on each.
  for chunks, fit in ((8, 'e.g. 4,'), (3, 'e.g. 4,'), (-1, 'e.g. 1,')):
    config.train.grad_cache_chunks = chunks
    with pytest.raises(UserError, match=rf'={chunks} does not divide .* of 4 rows .* {fit}'):
      checks.check_grad_cache(config, 8)
  for chunks in (0, 1, 2, 4):
    config.train.grad_cache_chunks = chunks
    checks.check_grad_cache(config, 8)


def test_a_run_resumes_with_another_chunk_count():
  config = helpers.step_config()
  saved = json.loads(config.to_json_best_effort())
  del saved['train']['grad_cache_chunks']  # a checkpoint written before gradient caching
  saved = checkpointing.upgrade_config(saved)
  assert checks.check_resume(saved, config, 'CHECKPOINT') is None
  config.train.grad_cache_chunks = 4
  assert 'train.grad_cache_chunks: 0 -> 4' in checks.check_resume(saved, config, 'CHECKPOINT')
