"""Shared fixtures: one tiny synthetic dataset and a tiny config for every test."""

import pytest

from configs import demo
from medclip_jax.data import prepare


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """A synthetic dataset small enough to train on in seconds."""
  out = tmp_path_factory.mktemp('tiny_data')
  prepare.prepare(
    'synthetic', str(out), num_train=96, num_val=8, num_test=48, image_size=32, seed=0
  )
  return str(out)


@pytest.fixture(scope='session')
def tiny_config(tiny_data):
  """Makes fresh copies of the demo config shrunk to tiny towers and 12 steps."""
  return lambda: _tiny_config(tiny_data)


def _tiny_config(tiny_data):
  config = demo.get_config()
  config.data.dir = tiny_data
  config.data.image_size = 32
  config.data.max_text_length = 24
  config.model.embed_dim = 32
  config.model.text.init = ''  # a tiny random text tower instead of MiniLM
  config.train.lr_multipliers = {'image_encoder': 1.0, 'text_encoder': 1.0, 'heads': 1.0}
  config.model.image.depth = 18
  config.model.image.width = 8
  config.model.text.hidden_size = 32
  config.model.text.num_layers = 1
  config.model.text.num_heads = 2
  config.model.text.intermediate_size = 64
  config.train.batch_size = 16
  config.train.steps = 12
  config.train.warmup_steps = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 6
  config.eval.batch_size = 16
  config.eval.bn_recompute_batches = 2
  return config


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, tiny_config):
  """(config, workdir, results) of a 12-step tiny run that no test modifies."""
  from medclip_jax import train  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  workdir = tmp_path_factory.mktemp('trained_run')
  results = train.train_and_evaluate(config, str(workdir))
  return config, workdir, results
