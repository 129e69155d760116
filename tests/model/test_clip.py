"""MedCLIP: the parameter tree, the logit scale, unit-norm named outputs, float32 under bf16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax.model import BertEncoder, MedCLIP, ResNet
from tests import helpers

EMBED_DIM = 16


def _clip(dtype=jnp.float32):
  return MedCLIP(
    image_encoder=ResNet(depth=18, width=helpers.RESNET_WIDTH, dtype=dtype),
    text_encoder=BertEncoder(**helpers.TINY_BERT, dtype=dtype),
    embed_dim=EMBED_DIM,
  )


@pytest.fixture(scope='module')
def clip():
  model = _clip()
  ids, mask = helpers.model_texts()
  variables = model.init(jax.random.key(0), helpers.model_images(), ids, mask, train=False)
  return model, variables


def test_clip_param_tree(clip):
  _, variables = clip
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['params']) == {
    'image_encoder',
    'text_encoder',
    'image_projection',
    'text_projection',
    'logit_scale',
  }
  assert set(variables['batch_stats']) == {'image_encoder'}
  assert variables['params']['image_projection']['kernel'].shape == (
    8 * helpers.RESNET_WIDTH,
    EMBED_DIM,
  )
  assert variables['params']['text_projection']['kernel'].shape == (
    helpers.TINY_BERT['hidden_size'],
    EMBED_DIM,
  )


def test_clip_logit_scale_init(clip):
  model, variables = clip
  ids, mask = helpers.model_texts()
  param = variables['params']['logit_scale']
  returned = model.apply(variables, helpers.model_images(), ids, mask, train=False)['logit_scale']
  for scale in (param, returned):
    assert scale.shape == ()
    assert scale.dtype == jnp.float32
    assert not jnp.asarray(scale).weak_type
    np.testing.assert_allclose(scale, math.log(1 / 0.07), rtol=1e-6)


def test_clip_named_outputs_are_unit_norm_embeddings(clip):
  model, variables = clip
  ids, mask = helpers.model_texts()
  outputs = model.apply(variables, helpers.model_images(), ids, mask, train=False)
  assert set(outputs) == {'image_embedding', 'text_embedding', 'logit_scale'}
  image_emb, text_emb = outputs['image_embedding'], outputs['text_embedding']
  for emb in (image_emb, text_emb):
    assert emb.shape == (helpers.IMAGE_SHAPE[0], EMBED_DIM)
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)

  # The towers are usable on their own through apply(method=...).
  np.testing.assert_allclose(
    model.apply(variables, helpers.model_images(), train=False, method=MedCLIP.encode_image),
    image_emb,
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    model.apply(variables, ids, mask, train=False, method=MedCLIP.encode_text),
    text_emb,
    rtol=1e-6,
  )


def test_clip_low_precision_keeps_float32_params_and_outputs():
  ids, mask = helpers.model_texts()
  out, variables = jax.eval_shape(
    lambda: _clip(jnp.bfloat16).init_with_output(
      jax.random.key(0), helpers.model_images(), ids, mask, train=False
    )
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(out))
