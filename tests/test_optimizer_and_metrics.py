"""Optimizer groups (decay mask, freezing) and the evaluation metrics."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medclip_jax import evaluate
from medclip_jax import optimizer


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
  try:
    optimizer.create(_train_config(vision=1.0), _params())
  except ValueError as e:
    assert 'vision' in str(e)
  else:
    raise AssertionError('an unknown group must be rejected')


def test_retrieval_metrics_on_a_known_similarity():
  # Every image's own caption is its best match, but caption 2 is closer to
  # image 0 (0.6) than to its own image 2 (0.5).
  image = np.eye(3, dtype=np.float32)
  text = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0, 0.5]], np.float32)
  r = evaluate.retrieval_metrics(image, text, ks=(1, 2))
  assert r['retrieval.gallery_size'] == 3
  assert r['retrieval.i2t.R@1'] == 1.0
  assert r['retrieval.t2i.R@1'] == 2 / 3 and r['retrieval.t2i.R@2'] == 1.0


def test_zeroshot_metrics_skip_unknown_labels():
  image = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
  classes = np.array([[1, 0], [0, 1]], np.float32)
  r = evaluate.zeroshot_metrics('modality', image, np.array([0, 0, -1]), classes)
  assert r == {'zeroshot.modality.top1': 0.5}
