"""The BERT text tower: shapes, masking, pooling, dropout, Hugging Face names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax.model import BertEncoder
from medclip_jax.model import bert as bert_lib
from tests import helpers


@pytest.fixture(scope='module')
def bert():
  """Tiny BERT params; both poolings share the same parameter tree."""
  ids, mask = helpers.model_texts()
  variables = BertEncoder(**helpers.TINY_BERT).init(jax.random.key(0), ids, mask, train=False)
  models = {p: BertEncoder(**helpers.TINY_BERT, pooling=p) for p in ('cls', 'mean')}
  return models, variables


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_output_shape(bert, pooling):
  models, variables = bert
  ids, mask = helpers.model_texts()
  out = models[pooling].apply(variables, ids, mask, train=False)
  assert out.shape == (len(helpers.TEXT_LENGTHS), helpers.TINY_BERT['hidden_size'])
  assert out.dtype == jnp.float32


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_ignores_masked_tokens(bert, pooling):
  models, variables = bert
  model = models[pooling]
  ids, mask = helpers.model_texts()
  out = model.apply(variables, ids, mask, train=False)

  padded_changed = jnp.where(mask == 0, (ids + 7) % helpers.TINY_BERT['vocab_size'], ids)
  assert not np.array_equal(padded_changed, ids)
  np.testing.assert_allclose(
    model.apply(variables, padded_changed, mask, train=False), out, rtol=0, atol=1e-6
  )

  real_changed = ids.at[:, 1].set((ids[:, 1] + 7) % helpers.TINY_BERT['vocab_size'])
  changed_out = model.apply(variables, real_changed, mask, train=False)
  for row in range(len(helpers.TEXT_LENGTHS)):
    assert not np.allclose(changed_out[row], out[row], atol=1e-4)


def test_bert_pooling_matches_hidden_states(bert):
  models, variables = bert
  ids, mask = helpers.model_texts()
  hidden = helpers.capture(models['cls'], variables, ('encoder',), ids, mask, train=False)
  np.testing.assert_allclose(
    models['cls'].apply(variables, ids, mask, train=False), hidden[:, 0], rtol=1e-6
  )
  m = np.asarray(mask, np.float32)[:, :, None]
  np.testing.assert_allclose(
    models['mean'].apply(variables, ids, mask, train=False),
    (hidden * m).sum(1) / m.sum(1),
    rtol=1e-5,
    atol=1e-6,
  )


def test_bert_dropout_only_in_training(bert):
  models, variables = bert
  model = models['cls']
  ids, mask = helpers.model_texts()
  eval_a = model.apply(variables, ids, mask, train=False)
  eval_b = model.apply(variables, ids, mask, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)

  train_a = model.apply(variables, ids, mask, train=True, rngs={'dropout': jax.random.key(3)})
  train_b = model.apply(variables, ids, mask, train=True, rngs={'dropout': jax.random.key(4)})
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)


def test_bert_default_token_types_are_zero(bert):
  models, variables = bert
  ids, mask = helpers.model_texts()
  np.testing.assert_array_equal(
    models['cls'].apply(variables, ids, mask, train=False),
    models['cls'].apply(variables, ids, mask, train=False, token_type_ids=jnp.zeros_like(ids)),
  )


def test_bert_rejects_bad_config_and_long_input(bert):
  with pytest.raises(ValueError, match='pooling'):
    BertEncoder(pooling='max')
  with pytest.raises(ValueError, match='divisible'):
    BertEncoder(hidden_size=30, num_heads=4)
  models, variables = bert
  too_long = jnp.ones((1, 600), jnp.int32)
  with pytest.raises(ValueError, match='max_position_embeddings'):
    models['cls'].apply(variables, too_long, too_long, train=False)


def test_bert_state_dict_names_match_huggingface(bert):
  _, variables = bert
  hidden, inter = helpers.TINY_BERT['hidden_size'], helpers.TINY_BERT['intermediate_size']
  expected = {
    'embeddings.word_embeddings.weight': (helpers.TINY_BERT['vocab_size'], hidden),
    'embeddings.position_embeddings.weight': (512, hidden),
    'embeddings.token_type_embeddings.weight': (2, hidden),
    'embeddings.LayerNorm.weight': (hidden,),
    'embeddings.LayerNorm.bias': (hidden,),
  }
  for i in range(helpers.TINY_BERT['num_layers']):
    p = f'encoder.layer.{i}'
    linears = {
      'attention.self.query': (hidden, hidden),
      'attention.self.key': (hidden, hidden),
      'attention.self.value': (hidden, hidden),
      'attention.output.dense': (hidden, hidden),
      'intermediate.dense': (inter, hidden),
      'output.dense': (hidden, inter),
    }
    for name, (out_f, in_f) in linears.items():
      expected[f'{p}.{name}.weight'] = (out_f, in_f)
      expected[f'{p}.{name}.bias'] = (out_f,)
    for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
      expected[f'{p}.{name}.weight'] = (hidden,)
      expected[f'{p}.{name}.bias'] = (hidden,)

  names = bert_lib.state_dict_names(variables['params'])
  assert set(names) == set(expected)
  for key, path in names.items():
    leaf = variables['params']
    for name in path:
      leaf = leaf[name]
    shape = leaf.shape
    if path[-1] == 'kernel':  # [in, out] -> HF Linear's [out, in]
      shape = shape[::-1]
    assert shape == expected[key], key
