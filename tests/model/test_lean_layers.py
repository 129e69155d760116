"""BERT's GELU and LayerNorm and the ResNet's BatchNorm (with its block's residual and
ReLU) with hand-written backward passes: the values, statistics and gradients of JAX's
and flax's own, and less memory held for the backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from medclip_jax.model import lean_layers


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  # Wide enough to reach GELU's saturated tails and LayerNorm's large offsets.
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 4 + 1)
  return x, jnp.asarray(rng.standard_normal(shape, np.float32))


def test_gelu_gives_jax_values_and_gradients():
  x, g = _inputs((8, 33, 40))
  exact = lambda x: jax.nn.gelu(x, approximate=False)
  np.testing.assert_array_equal(lean_layers.gelu(x), exact(x))
  ours = jax.grad(lambda x: jnp.sum(lean_layers.gelu(x) * g))(x)
  theirs = jax.grad(lambda x: jnp.sum(exact(x) * g))(x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # Relative accuracy holds into both tails, where the derivative is tiny or near 1.
  tails = jnp.linspace(-8.0, 8.0, 321)
  np.testing.assert_allclose(
    jax.vmap(jax.grad(lean_layers.gelu))(tails), jax.vmap(jax.grad(exact))(tails), rtol=1e-4
  )


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_layer_norm_gives_flax_parameters_values_and_gradients(dtype):
  x, g = _inputs((2, 3, 9, 48))  # normalised over the last axis only
  ours, theirs = (
    module(epsilon=1e-12, dtype=dtype, param_dtype=jnp.float32)
    for module in (lean_layers.LayerNorm, nn.LayerNorm)
  )
  params = theirs.init(jax.random.PRNGKey(0), x)
  layout = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert layout(ours.init(jax.random.PRNGKey(0), x)) == layout(params)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)

  def loss(module):
    return lambda p, x: jnp.sum(module.apply(p, x.astype(dtype)).astype(jnp.float32) * g)

  y_ours, y_theirs = ours.apply(params, x.astype(dtype)), theirs.apply(params, x.astype(dtype))
  assert y_ours.dtype == y_theirs.dtype == dtype
  np.testing.assert_array_equal(y_ours.astype(jnp.float32), y_theirs.astype(jnp.float32))
  grads_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
  grads_theirs = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
  # float32 agrees to rounding; bfloat16 within its 8 bits (flax's backward also
  # rounds its intermediates to bfloat16, ours keeps them in float32).
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_theirs)):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * float(jnp.max(jnp.abs(b))))


def _flax_block(relu, momentum, dtype, train):
  """relu(flax BatchNorm(x) + residual), as the ResNet wrote it before the fusion."""

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, residual):
      y = nn.BatchNorm(not train, momentum=momentum, epsilon=1e-5, dtype=dtype)(x)
      y = y if residual is None else y + residual
      return nn.relu(y) if relu else y

  return Block()


class _LeanBlock(nn.Module):
  momentum: float
  dtype: object
  train: bool
  relu: bool

  @nn.compact
  def __call__(self, x, residual):
    bn = lean_layers.BatchNorm(not self.train, self.momentum, 1e-5, self.dtype)
    return bn(x, residual, relu=self.relu)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('residual, relu', [(False, False), (False, True), (True, True)])
def test_batch_norm_gives_flax_values_statistics_and_gradients(dtype, residual, relu):
  x, g = _inputs((4, 6, 5, 24))
  r = _inputs((4, 6, 5, 24), seed=2)[0].astype(dtype) if residual else None
  x = x.astype(dtype)
  theirs = _flax_block(relu, 0.9, dtype, train=True)
  ours = _LeanBlock(0.9, dtype, train=True, relu=relu)
  variables = theirs.init(jax.random.PRNGKey(0), x, r)
  layout = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert layout(ours.init(jax.random.PRNGKey(0), x, r)) == layout(variables)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
    lambda p: p + jnp.asarray(rng.uniform(0.5, 1.5, p.shape), p.dtype), variables
  )

  def run(module):
    def loss(params, x, r):
      y, stats = module.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x, r, mutable=['batch_stats']
      )
      return jnp.sum(y.astype(jnp.float32) * g), (y, stats)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(variables['params'], x, r)

  grads_ours, (y_ours, stats_ours) = run(ours)
  grads_theirs, (y_theirs, stats_theirs) = run(theirs)
  # The forward pass and the running statistics are flax's operations in flax's order.
  assert y_ours.dtype == y_theirs.dtype == dtype
  np.testing.assert_array_equal(y_ours.astype(jnp.float32), y_theirs.astype(jnp.float32))
  for a, b in zip(jax.tree.leaves(stats_ours), jax.tree.leaves(stats_theirs)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(grads_ours) == jax.tree.structure(grads_theirs)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_theirs)):
    np.testing.assert_allclose(
      np.asarray(a, np.float32),
      np.asarray(b, np.float32),
      rtol=tolerance,
      atol=tolerance * float(jnp.max(jnp.abs(b.astype(jnp.float32)))),
    )


@pytest.mark.parametrize('offset', [0.0, 40.0])
def test_batch_norm_gradients_through_statistics_far_means_and_constant_channels(offset):
  # The loss reads the updated running statistics too; the inputs' means sit `offset`
  # away from zero (deviation ~4: sum(g * x) - mean * sum(g) cancels), and one channel
  # is constant (the variance clipped to zero, no gradient through it).
  x, g = _inputs((4, 6, 5, 24))
  x = (x + offset).at[..., 0].set(0.3)
  r = _inputs((4, 6, 5, 24), seed=2)[0]
  g_stats = jnp.asarray(np.random.default_rng(3).standard_normal((2, 24), np.float32))
  theirs = _flax_block(True, 0.9, jnp.float32, train=True)
  ours = _LeanBlock(0.9, jnp.float32, train=True, relu=True)
  variables = theirs.init(jax.random.PRNGKey(0), x, r)

  def grads(module):
    def loss(params, x, r):
      y, stats = module.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x, r, mutable=['batch_stats']
      )
      stats = stats['batch_stats']['BatchNorm_0']
      return jnp.sum(y * g) + jnp.sum(stats['mean'] * g_stats[0] + stats['var'] * g_stats[1])

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(variables['params'], x, r)

  for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(theirs))):
    # The input gradient per channel (the constant channel's is ~300x the others'),
    # the parameters' over all channels (the constant channel's scale gradient is noise).
    scale = np.max(np.abs(b), axis=tuple(range(b.ndim - 1)) or None, keepdims=True)
    np.testing.assert_allclose(a / scale, b / scale, rtol=1e-4, atol=1e-4)


def test_batch_norm_eval_mode_uses_running_statistics_as_flax_does():
  x, _ = _inputs((4, 6, 5, 24))
  r = _inputs((4, 6, 5, 24), seed=2)[0]
  theirs = _flax_block(True, 0.9, jnp.float32, train=False)
  ours = _LeanBlock(0.9, jnp.float32, train=False, relu=True)
  variables = theirs.init(jax.random.PRNGKey(0), x, r)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
    lambda p: p + jnp.asarray(rng.uniform(0.5, 1.5, p.shape), p.dtype), variables
  )
  np.testing.assert_array_equal(ours.apply(variables, x, r), theirs.apply(variables, x, r))


def test_batch_norm_backward_keeps_no_normalised_copy():
  # Four conv-sized BatchNorm + ReLU layers: flax's version keeps the pre-ReLU output
  # too, and its backward pass materialises a normalised copy of each input; ours keeps
  # the input and output (0.56x the temporaries at these shapes).
  x, _ = _inputs((8, 32, 32, 64))
  w = jnp.ones((64, 64)) / 64

  def temp_bytes(module):
    variables = module.init(jax.random.PRNGKey(0), x, None)

    def loss(params, x):
      for _ in range(4):
        x = module.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          x @ w,
          None,
          mutable=['batch_stats'],
        )[0]
      return jnp.sum(x)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables['params'], x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  flax_bytes = temp_bytes(_flax_block(True, 0.9, jnp.float32, train=True))
  assert temp_bytes(_LeanBlock(0.9, jnp.float32, train=True, relu=True)) < 0.7 * flax_bytes


def test_gelu_holds_half_the_memory_for_its_backward_pass():
  # A feed-forward-shaped stack, as in BERT: dense, GELU, dense, residual. (What
  # LayerNorm saves shows in BERT, not in a stack this small: BENCHMARKS.md.)
  x, _ = _inputs((8, 64, 128))
  w1 = jnp.ones((128, 512)) / 128
  w2 = jnp.ones((512, 128)) / 512

  def temp_bytes(act):
    def loss(x):
      for _ in range(4):
        x = act(x @ w1) @ w2 + x
      return jnp.sum(x)

    return jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis().temp_size_in_bytes

  exact_bytes = temp_bytes(lambda h: jax.nn.gelu(h, approximate=False))
  assert temp_bytes(lean_layers.gelu) < 0.6 * exact_bytes
