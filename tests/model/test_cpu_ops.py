"""The CPU convolution and max-pool: values and gradients equal XLA's own."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from medclip_jax.model import ResNet
from medclip_jax.model import cpu_ops


def _relative_error(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


@pytest.mark.parametrize('kernel', [1, 3, 7])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [9, 10])  # odd and even sides: strided windows end differently
def test_conv_gradients_equal_xlas(kernel, stride, size):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(kernel * 10 + stride), 3)
  x = jax.random.normal(kx, (2, size, size + 1, 5))
  w = jax.random.normal(kw, (kernel, kernel, 5, 6))
  padding = ((kernel // 2, kernel // 2),) * 2  # ResNet's
  y = _xla_conv(x, w, (stride, stride), padding)
  g = jax.random.normal(kg, y.shape)

  def vjp(conv):
    out, pullback = jax.vjp(lambda x, w: conv(x, w, (stride, stride), padding), x, w)
    return out, *pullback(g)

  (ours, dx, dw), (theirs, dx_ref, dw_ref) = vjp(cpu_ops.conv), vjp(_xla_conv)
  for a, b in ((ours, theirs), (dx, dx_ref), (dw, dw_ref)):
    assert _relative_error(a, b) < 1e-5


def test_conv_with_uneven_padding_and_flax_dispatch():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  padding = ((0, 2), (1, 0))
  for stride in (1, 2):
    grads = [
      jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, (stride, stride), padding))), (0, 1))(x, w)
      for f in (cpu_ops.conv, _xla_conv)
    ]
    for ours, theirs in zip(*grads):
      assert _relative_error(ours, theirs) < 1e-5
  # What it does not cover (a string padding) goes to XLA's convolution, as do 3x3
  # kernels on maps larger than SMALL_MAP pixels.
  numbers = ('NHWC', 'HWIO', 'NHWC')
  same = cpu_ops.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=numbers)
  np.testing.assert_array_equal(same, _xla_conv(x, w, (1, 1), 'SAME'))
  dispatch = lambda x, layout=numbers: str(
    jax.make_jaxpr(
      lambda x: cpu_ops.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=layout)
    )(x)
  )
  assert 'custom_vjp' not in dispatch(x) and 'conv_general_dilated' in dispatch(x)
  assert 'custom_vjp' in dispatch(x[:, :4, :4])  # 16 pixels
  nchw = ('NCHW', 'OIHW', 'NCHW')
  assert 'custom_vjp' not in dispatch(x[:, :4, :4].transpose(0, 3, 1, 2), nchw)


def test_max_pool_routes_each_gradient_to_the_first_maximum_like_xla():
  # After a ReLU most windows hold ties (zeros): the routing of ties must match too.
  x = nn.relu(jax.random.normal(jax.random.PRNGKey(2), (2, 11, 10, 3)))
  x = x.at[0, 2, 2, 0].set(x[0, 2, 3, 0])  # a tie between two positive values
  padding = ((1, 1), (1, 1))
  g = jax.random.normal(jax.random.PRNGKey(3), cpu_ops.max_pool(x, (3, 3), (2, 2), padding).shape)

  def pullback(pool):
    out, vjp = jax.vjp(lambda x: pool(x), x)
    return out, vjp(g)[0]

  ours, dx = pullback(lambda x: cpu_ops.max_pool(x, (3, 3), (2, 2), padding))
  theirs, dx_ref = pullback(lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding))
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-6)


def test_a_resnet_on_cpu_ops_has_the_same_parameters_outputs_and_gradients():
  images = jax.random.uniform(jax.random.PRNGKey(4), (2, 64, 64, 3))
  models = {ops: ResNet(depth=18, width=8, ops=ops) for ops in ('cpu', 'xla')}
  variables = models['xla'].init(jax.random.PRNGKey(5), images, train=False)
  assert jax.tree.structure(models['cpu'].init(jax.random.PRNGKey(5), images, train=False)) == (
    jax.tree.structure(variables)
  )

  def loss(params, model):
    out, _ = model.apply(
      {**variables, 'params': params}, images, train=True, mutable=['batch_stats']
    )
    return jnp.sum(out**2)

  # Jitted: op by op, the two gradients took a minute.
  grads = {
    ops: jax.jit(jax.grad(functools.partial(loss, model=m)))(variables['params'])
    for ops, m in models.items()
  }
  for ours, theirs in zip(jax.tree.leaves(grads['cpu']), jax.tree.leaves(grads['xla'])):
    assert _relative_error(ours, theirs) < 1e-4
