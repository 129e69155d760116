"""The hashed dropout mask: the asked rate, independent between keys and elements,
the same under any sharding, and flax's scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax.model.dropout import Dropout, keep_mask
from tests import helpers


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_each_element_is_dropped_at_the_rate_independently(rate):
  shape = (64, 128, 96)  # 786,432 elements: the share's standard error is under 0.0006
  a = np.asarray(keep_mask(jax.random.PRNGKey(0), shape, rate))
  b = np.asarray(keep_mask(jax.random.PRNGKey(1), shape, rate))
  keep = 1.0 - rate
  assert abs(a.mean() - keep) < 0.003
  # Two keys' masks agree as often as independent draws would, and so do
  # neighbouring elements along each axis (no pattern in the index).
  agree = keep**2 + rate**2
  assert abs((a == b).mean() - agree) < 0.003
  for axis in range(3):
    first = np.take(a, range(a.shape[axis] - 1), axis=axis)
    second = np.take(a, range(1, a.shape[axis]), axis=axis)
    assert abs((first == second).mean() - agree) < 0.004
  # Every row sees its own mask (not a repeated pattern).
  assert len({row.tobytes() for row in a.reshape(64, -1)}) == 64


def test_the_module_scales_kept_elements_and_is_the_identity_when_deterministic():
  x = jnp.arange(1.0, 1001.0).reshape(10, 100)
  key = {'dropout': jax.random.PRNGKey(3)}
  y = Dropout(rate=0.25).apply({}, x, rngs=key)
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.65 < kept.mean() < 0.85
  np.testing.assert_array_equal(Dropout(rate=0.25, deterministic=True).apply({}, x), x)
  assert not np.any(np.asarray(Dropout(rate=1.0).apply({}, x, rngs=key)))
  # bfloat16 stays bfloat16.
  assert Dropout(rate=0.1).apply({}, x.astype(jnp.bfloat16), rngs=key).dtype == jnp.bfloat16


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from medclip_jax.model.dropout import Dropout
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
apply = lambda x: Dropout(rate=0.3).apply({}, x, rngs={'dropout': jax.random.PRNGKey(5)})
x = jnp.ones((16, 24, 8))
single = apply(x)
spec = NamedSharding(mesh, P('data', None, 'model'))
sharded = jax.jit(apply, out_shardings=spec)(jax.device_put(x, spec))
print(len(sharded.sharding.device_set), bool(np.array_equal(np.asarray(sharded), np.asarray(single))))
"""


def test_the_mask_is_the_same_however_the_array_is_sharded():
  # On 8 simulated devices, split over rows and features, as a trained tower's
  # activations are under data and model parallelism.
  assert helpers.run_on_devices(8, _SHARDED).split() == ['8', 'True']
