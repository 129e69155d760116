"""InfoNCE against a NumPy reference, on one device and on eight."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax import sharding
from medclip_jax.objectives import infonce
from tests import helpers

_GRAD_SNIPPET = """
import json, jax, jax.numpy as jnp, numpy as np
from medclip_jax import sharding
from medclip_jax.objectives import infonce
rng = np.random.default_rng(0)
img = rng.normal(size=(32, 16)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = rng.normal(size=(32, 16)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
mesh = sharding.create_mesh({'data': -1})
f = jax.jit(jax.value_and_grad(lambda a, b: infonce.infonce(a, b, 14.3, mesh), argnums=(0, 1)))
loss, (gi, gt) = f(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32))
print(json.dumps({'devices': jax.device_count(), 'loss': float(loss),
                  'gi': np.asarray(gi).tolist(), 'gt': np.asarray(gt).tolist()}))
"""


def numpy_infonce(img, txt, scale):
  """Reference: mean of the two cross-entropies with the diagonal as target."""
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T

  def xent(l):
    l = l - l.max(axis=1, keepdims=True)
    logp = l - np.log(np.exp(l).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(logp))

  return (xent(logits) + xent(logits.T)) / 2


@pytest.mark.parametrize('batch,dim,scale', [(8, 4, 1.0), (64, 32, 14.285), (33, 7, 100.0)])
def test_infonce_matches_numpy(batch, dim, scale):
  rng = np.random.default_rng(batch)
  img, txt = helpers.unit_rows(rng, (batch, dim)), helpers.unit_rows(rng, (batch, dim))
  mesh = sharding.create_mesh({'data': -1})
  got = jax.jit(lambda a, b: infonce.infonce(a, b, scale, mesh))(
    jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32)
  )
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), numpy_infonce(img, txt, scale), rtol=1e-5, atol=1e-5)


def test_infonce_is_float32_for_bfloat16_inputs():
  rng = np.random.default_rng(1)
  img, txt = helpers.unit_rows(rng, (16, 8)), helpers.unit_rows(rng, (16, 8))
  mesh = sharding.create_mesh({'data': -1})
  got = infonce.infonce(jnp.asarray(img, jnp.bfloat16), jnp.asarray(txt, jnp.bfloat16), 10.0, mesh)
  assert got.dtype == jnp.float32


def test_infonce_perfect_pairs_have_low_loss():
  eye = np.eye(8, dtype=np.float32)
  mesh = sharding.create_mesh({'data': -1})
  assert float(infonce.infonce(eye, eye, 100.0, mesh)) < 1e-6
  assert float(infonce.infonce(eye, np.roll(eye, 1, axis=0), 100.0, mesh)) > 10


def test_global_batch_loss_and_gradients_do_not_depend_on_device_count():
  one, eight = (
    json.loads(helpers.run_on_devices(n, _GRAD_SNIPPET).strip().splitlines()[-1]) for n in (1, 8)
  )
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['loss'], one['loss'], atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gi']), np.array(one['gi']), atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gt']), np.array(one['gt']), atol=1e-6)


def test_rows_without_an_image_are_left_out_exactly():
  # Unpaired text-only rows (valid 0) neither score nor compete: the loss and the other
  # rows' gradients are those of InfoNCE over the valid rows alone.
  rng = np.random.default_rng(3)
  img, txt = helpers.unit_rows(rng, (12, 8)), helpers.unit_rows(rng, (12, 8))
  valid = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], np.float32)
  keep = valid > 0
  mesh = sharding.create_mesh({'data': -1})
  masked = jax.value_and_grad(
    lambda a, b: infonce.infonce(a, b, 14.3, mesh, valid=valid), argnums=(0, 1)
  )(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32))
  alone = jax.value_and_grad(lambda a, b: infonce.infonce(a, b, 14.3, mesh), argnums=(0, 1))(
    jnp.asarray(img[keep], jnp.float32), jnp.asarray(txt[keep], jnp.float32)
  )
  np.testing.assert_allclose(masked[0], alone[0], rtol=1e-6)
  np.testing.assert_allclose(masked[0], numpy_infonce(img[keep], txt[keep], 14.3), rtol=1e-5)
  for got, want in zip(masked[1], alone[1]):
    np.testing.assert_allclose(np.asarray(got)[keep], want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[~keep], 0.0)
