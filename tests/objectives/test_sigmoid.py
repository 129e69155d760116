"""SigLIP's sigmoid loss against a NumPy reference, and its device ring against one device."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax import sharding
from medclip_jax.objectives import sigmoid
from tests import helpers


def numpy_sigmoid(img, txt, scale, bias):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T + bias
  labels = 2 * np.eye(len(img)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(img)


@pytest.mark.parametrize('batch,dim,scale,bias', [(8, 4, 10.0, -10.0), (24, 16, 3.0, 0.5)])
def test_sigmoid_matches_numpy(batch, dim, scale, bias):
  rng = np.random.default_rng(batch)
  img, txt = helpers.unit_rows(rng, (batch, dim)), helpers.unit_rows(rng, (batch, dim))
  mesh = sharding.create_mesh({'data': -1})
  got = sigmoid.sigmoid(
    jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), scale, bias, mesh
  )
  np.testing.assert_allclose(float(got), numpy_sigmoid(img, txt, scale, bias), rtol=1e-5)


_SIGMOID_SNIPPET = """
import json, jax, jax.numpy as jnp, numpy as np
from medclip_jax import sharding
from medclip_jax.objectives import sigmoid
rng = np.random.default_rng(0)
img = rng.normal(size=(32, 16)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = rng.normal(size=(32, 16)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
mesh = sharding.create_mesh({'data': min(2, jax.device_count()), 'fsdp': -1})
f = jax.jit(jax.value_and_grad(lambda a, b: sigmoid.sigmoid(a, b, 10.0, -5.0, mesh, ('data', 'fsdp')), argnums=(0, 1)))
loss, (gi, gt) = f(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32))
print(json.dumps({'devices': jax.device_count(), 'loss': float(loss),
                  'gi': np.asarray(gi).tolist(), 'gt': np.asarray(gt).tolist()}))
"""


def test_sigmoid_ring_over_eight_devices_equals_one_device():
  one, eight = (
    json.loads(helpers.run_on_devices(n, _SIGMOID_SNIPPET).strip().splitlines()[-1]) for n in (1, 8)
  )
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['loss'], one['loss'], atol=1e-5)
  np.testing.assert_allclose(np.array(eight['gi']), np.array(one['gi']), atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gt']), np.array(one['gt']), atol=1e-6)
