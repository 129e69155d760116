"""InfoNCE against a NumPy reference, on one device and on eight."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax import losses
from medclip_jax import sharding

_GRAD_SNIPPET = """
import json, jax, jax.numpy as jnp, numpy as np
from medclip_jax import losses, sharding
rng = np.random.default_rng(0)
img = rng.normal(size=(32, 16)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = rng.normal(size=(32, 16)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
mesh = sharding.create_mesh({'data': -1})
f = jax.jit(jax.value_and_grad(lambda a, b: losses.infonce(a, b, 14.3, mesh), argnums=(0, 1)))
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


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize('batch,dim,scale', [(8, 4, 1.0), (64, 32, 14.285), (33, 7, 100.0)])
def test_infonce_matches_numpy(batch, dim, scale):
  rng = np.random.default_rng(batch)
  img, txt = _unit(rng, (batch, dim)), _unit(rng, (batch, dim))
  mesh = sharding.create_mesh({'data': -1})
  got = jax.jit(lambda a, b: losses.infonce(a, b, scale, mesh))(
    jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32)
  )
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), numpy_infonce(img, txt, scale), rtol=1e-5, atol=1e-5)


def test_infonce_is_float32_for_bfloat16_inputs():
  rng = np.random.default_rng(1)
  img, txt = _unit(rng, (16, 8)), _unit(rng, (16, 8))
  mesh = sharding.create_mesh({'data': -1})
  got = losses.infonce(jnp.asarray(img, jnp.bfloat16), jnp.asarray(txt, jnp.bfloat16), 10.0, mesh)
  assert got.dtype == jnp.float32


def test_infonce_perfect_pairs_have_low_loss():
  eye = np.eye(8, dtype=np.float32)
  mesh = sharding.create_mesh({'data': -1})
  assert float(losses.infonce(eye, eye, 100.0, mesh)) < 1e-6
  assert float(losses.infonce(eye, np.roll(eye, 1, axis=0), 100.0, mesh)) > 10


def _run_devices(n, snippet=_GRAD_SNIPPET):
  env = {
    **os.environ,
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}',
    'JAX_PLATFORMS': 'cpu',
  }
  out = subprocess.run(
    [sys.executable, '-c', snippet],
    env=env,
    check=True,
    capture_output=True,
    text=True,
    cwd=os.getcwd(),
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_global_batch_loss_and_gradients_do_not_depend_on_device_count():
  one, eight = _run_devices(1), _run_devices(8)
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['loss'], one['loss'], atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gi']), np.array(one['gi']), atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gt']), np.array(one['gt']), atol=1e-6)


def numpy_sigmoid(img, txt, scale, bias):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T + bias
  labels = 2 * np.eye(len(img)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(img)


@pytest.mark.parametrize('batch,dim,scale,bias', [(8, 4, 10.0, -10.0), (24, 16, 3.0, 0.5)])
def test_sigmoid_matches_numpy(batch, dim, scale, bias):
  rng = np.random.default_rng(batch)
  img, txt = _unit(rng, (batch, dim)), _unit(rng, (batch, dim))
  mesh = sharding.create_mesh({'data': -1})
  got = losses.sigmoid(
    jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), scale, bias, mesh
  )
  np.testing.assert_allclose(float(got), numpy_sigmoid(img, txt, scale, bias), rtol=1e-5)


_SIGMOID_SNIPPET = """
import json, jax, jax.numpy as jnp, numpy as np
from medclip_jax import losses, sharding
rng = np.random.default_rng(0)
img = rng.normal(size=(32, 16)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = rng.normal(size=(32, 16)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
mesh = sharding.create_mesh({'data': min(2, jax.device_count()), 'fsdp': -1})
f = jax.jit(jax.value_and_grad(lambda a, b: losses.sigmoid(a, b, 10.0, -5.0, mesh, ('data', 'fsdp')), argnums=(0, 1)))
loss, (gi, gt) = f(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32))
print(json.dumps({'devices': jax.device_count(), 'loss': float(loss),
                  'gi': np.asarray(gi).tolist(), 'gt': np.asarray(gt).tolist()}))
"""


def test_sigmoid_ring_over_eight_devices_equals_one_device():
  one, eight = _run_devices(1, _SIGMOID_SNIPPET), _run_devices(8, _SIGMOID_SNIPPET)
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['loss'], one['loss'], atol=1e-5)
  np.testing.assert_allclose(np.array(eight['gi']), np.array(one['gi']), atol=1e-6)
  np.testing.assert_allclose(np.array(eight['gt']), np.array(one['gt']), atol=1e-6)
