"""The cross-modal decoder of MMCLIP's objectives: shapes, masks, the gate for rows without the
other modality, and the head restricted to chosen positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax.model.decoder import CrossDecoder


@pytest.fixture(scope='module')
def decoder():
  model = CrossDecoder(width=16, depth=2, heads=2, out_features=5)
  keys = jax.random.split(jax.random.key(0), 3)
  queries = jax.random.normal(keys[0], (3, 4, 6))
  context = jax.random.normal(keys[1], (3, 7, 8))
  masks = jnp.ones((3, 4), bool), jnp.ones((3, 7), bool)
  variables = model.init(keys[2], queries, masks[0], context, masks[1])
  return model, variables, queries, context, masks


def test_output_shapes_and_float32_parameters(decoder):
  model, variables, queries, context, (qm, cm) = decoder
  out = model.apply(variables, queries, qm, context, cm)
  assert out.shape == (3, 4, 5) and out.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  picked = model.apply(variables, queries, qm, context, cm, positions=jnp.array([0, 5, 11]))
  np.testing.assert_allclose(picked, out.reshape(12, 5)[jnp.array([0, 5, 11])], atol=1e-6)


def test_masked_context_positions_change_nothing(decoder):
  model, variables, queries, context, (qm, cm) = decoder
  cm = cm.at[:, 5:].set(False)
  out = model.apply(variables, queries, qm, context, cm)
  changed = context.at[:, 5:].set(99.0)
  np.testing.assert_allclose(model.apply(variables, queries, qm, changed, cm), out, atol=1e-5)
  assert not np.allclose(model.apply(variables, queries, qm, changed, jnp.ones_like(cm)), out)


def test_a_row_without_context_ignores_it(decoder):
  model, variables, queries, context, (qm, cm) = decoder
  present = jnp.array([1.0, 0.0, 1.0])
  out = model.apply(variables, queries, qm, context, cm, context_present=present)
  other = model.apply(variables, queries, qm, -context, cm, context_present=present)
  np.testing.assert_allclose(out[1], other[1], atol=1e-6)  # row 1 sees no context
  assert not np.allclose(out[0], other[0])


def test_gradients_reach_parameters_queries_and_context(decoder):
  model, variables, queries, context, (qm, cm) = decoder

  def loss(params, q, c):
    return jnp.sum(model.apply({'params': params}, q, qm, c, cm) ** 2)

  grads = jax.grad(loss, argnums=(0, 1, 2))(variables['params'], queries, context)
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
