"""The set-up: a run can start from the weights of a trained model (config.init_from, over
pretrained towers); a locked tower runs in inference mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from medclip_jax.errors import UserError
from medclip_jax.training import checkpointing
from medclip_jax.training.setup import Setup
from medclip_jax.training.setup import restore_on_one_device


def test_init_from_takes_a_trained_models_weights_not_its_optimizer_or_step(trained_run):
  config, workdir, _ = trained_run
  trained = restore_on_one_device(config, checkpointing.Checkpointer(str(workdir), keep=3), 12)
  fresh = config.copy_and_resolve_references()
  fresh.init_from = str(workdir)
  state = Setup.create(fresh).init_state()
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(trained.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(trained.batch_stats)):
    np.testing.assert_array_equal(a, b)
  assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state) if x.size > 1)


def test_init_from_takes_its_towers_over_the_pretrained_ones_the_config_names(
  trained_run, tmp_path
):
  from medclip_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import convert, export  # pylint: disable=import-outside-toplevel

  config, workdir, _ = trained_run
  trained = restore_on_one_device(config, checkpointing.Checkpointer(str(workdir), keep=3), 12)
  # A pretrained text tower of the same sizes (an untrained one), as a Hugging Face directory.
  pretrained = tmp_path / 'bert'
  untrained = Setup.create(config.copy_and_resolve_references()).init_state().params['text_encoder']
  pretrained.mkdir()
  save_file(convert.bert_to_hf(untrained), str(pretrained / 'model.safetensors'))
  export.hf_bert_config(config.model.text).save_pretrained(str(pretrained))
  tokenizer_lib.load(config.data.tokenizer).save_pretrained(str(pretrained))
  fresh = config.copy_and_resolve_references()
  fresh.init_from, fresh.model.text.init = str(workdir), f'hf:{pretrained}'
  state = Setup.create(fresh).init_state()
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(trained.params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_init_from_a_model_of_other_sizes_is_a_user_error(trained_run):
  config, workdir, _ = trained_run
  other = config.copy_and_resolve_references()
  other.init_from = str(workdir)
  other.model.embed_dim = 16
  with pytest.raises(UserError, match=r'image_projection, text_projection \(params\) differ'):
    Setup.create(other).init_state()


@pytest.mark.parametrize('text_multiplier', [0.0, 1.0])
def test_a_locked_tower_runs_in_inference_mode(tiny_config, text_multiplier):
  config = tiny_config()
  config.train.lr_multipliers.text_encoder = text_multiplier
  setup = Setup.create(config)
  state = setup.init_state()
  batch = setup.global_batch(next(setup.train_batches()))
  losses = []
  for seed in (1, 2):  # two dropout streams
    fresh = jax.tree.map(jnp.copy, state.replace(rng=jax.random.PRNGKey(seed)))  # it is donated
    _, metrics = setup.train_step(fresh, batch)
    losses.append(float(metrics['loss']))
  # The ResNet has no dropout: only a text tower in training mode sees the two streams.
  assert (losses[0] == losses[1]) == (text_multiplier == 0.0), losses
