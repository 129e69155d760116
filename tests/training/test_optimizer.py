"""The optimizer: parameter groups by pattern, weight decay on matrices only, freezing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medclip_jax.errors import UserError
from medclip_jax.training import optimizer


def _train_config(**multipliers):
  return ml_collections.ConfigDict(
    dict(
      learning_rate=0.1,
      end_learning_rate_factor=0.0,
      warmup_steps=0,
      steps=10,
      adam_b1=0.9,
      adam_b2=0.98,
      adam_eps=1e-6,
      weight_decay=0.5,
      grad_clip_norm=1.0,
      param_groups=optimizer.DEFAULT_PARAM_GROUPS,
      lr_multipliers={'image_encoder': 1.0, 'text_encoder': 1.0, 'heads': 1.0, **multipliers},
    )
  )


def _params():
  return {
    'image_encoder': {
      'conv': {'kernel': jnp.ones((2, 2))},
      'bn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)},
    },
    'text_encoder': {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}},
    'image_projection': {'kernel': jnp.ones((2, 2))},
    'logit_scale': jnp.asarray(2.0),
  }


def _step(config, grads_value):
  params = _params()
  tx = optimizer.create(config, params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, grads_value), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, optax.apply_updates(params, updates)


def test_weight_decay_only_on_matrices():
  # With zero gradients only weight decay moves parameters.
  before, after = _step(_train_config(), 0.0)
  assert not np.allclose(
    after['image_encoder']['conv']['kernel'], before['image_encoder']['conv']['kernel']
  )
  assert not np.allclose(after['image_projection']['kernel'], before['image_projection']['kernel'])
  for path in (
    ('image_encoder', 'bn', 'scale'),
    ('image_encoder', 'bn', 'bias'),
    ('text_encoder', 'dense', 'bias'),
  ):
    a, b = after, before
    for key in path:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(after['logit_scale'], before['logit_scale'])


def test_zero_multiplier_freezes_a_tower():
  before, after = _step(_train_config(text_encoder=0.0), 1.0)
  np.testing.assert_array_equal(
    after['text_encoder']['dense']['kernel'], before['text_encoder']['dense']['kernel']
  )
  assert not np.allclose(
    after['image_encoder']['conv']['kernel'], before['image_encoder']['conv']['kernel']
  )


def test_unknown_group_is_rejected():
  with pytest.raises(UserError, match="unknown groups \\['vision'\\]"):
    optimizer.create(_train_config(vision=0.5), _params())


def test_the_default_multipliers_fit_a_config_with_groups_of_its_own():
  config = _train_config(decoders=1.0)  # as configs/default.py has it
  config.param_groups = {k: v for k, v in optimizer.DEFAULT_PARAM_GROUPS.items() if k != 'decoders'}
  optimizer.create(config, _params())  # no 'decoders' group, and no error


def test_groups_are_patterns_over_parameter_paths():
  config = _train_config()
  labels = optimizer.param_labels(config, _params())
  # A subtree all in one group is labelled once, as the optimizer state was
  # laid out when groups were the top-level keys.
  assert labels == {
    'image_encoder': 'image_encoder',
    'text_encoder': 'text_encoder',
    'image_projection': 'heads',
    'logit_scale': 'heads',
  }
  config.param_groups = {**config.param_groups, 'norms': r'image_encoder/bn/.*'}
  config.param_groups.image_encoder = r'image_encoder/conv/.*'
  assert optimizer.param_labels(config, _params())['image_encoder'] == {
    'conv': 'image_encoder',
    'bn': 'norms',
  }


def test_a_parameter_in_no_group_or_in_two_is_an_error_not_a_default():
  params = {**_params(), 'decoder': {'dense': {'kernel': jnp.ones((2, 2))}}}
  with pytest.raises(UserError, match=r'in no group \(1\): decoder/dense/kernel'):
    optimizer.create(_train_config(), params)
  config = _train_config()
  config.param_groups = {**config.param_groups, 'decoder': r'.*kernel'}
  with pytest.raises(UserError, match=r'in several groups \(3\)'):
    optimizer.param_labels(config, _params())
