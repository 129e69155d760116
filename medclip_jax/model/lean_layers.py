"""Exact GELU and LayerNorm whose backward passes keep only their input.

Under `jax.grad`, `jax.nn.gelu(approximate=False)` keeps three or four arrays
the size of its input for the backward pass (the product, erfc, exp, and in
BERT a copy), and flax's `LayerNorm` three. Here GELU keeps its input and
LayerNorm its input and per-token mean and inverse deviation; the rest is
recomputed in the backward pass. The jitted gradient of BERT-base at batch
16 x 128 tokens then needs 1.46 instead of 2.15 GiB of XLA temporaries, and a
step on a CPU faults in fewer fresh pages (BENCHMARKS.md).

Forward values are those of `jax.nn.gelu` and flax's `LayerNorm`, computed by
the same operations in the same order (statistics in at least float32,
E[x^2] - E[x]^2 variance, scale folded into the inverse deviation); the tests
hold the gradients to JAX's and flax's within 1e-5 relative in float32
(tests/model/test_lean_layers.py). Being `jax.custom_vjp` functions, they
support reverse-mode differentiation only (no `jax.jvp` or `jax.hessian`).
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


@jax.custom_vjp
def gelu(x):
  """Exact (erf) GELU, as `jax.nn.gelu(x, approximate=False)`."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  # The barrier keeps XLA from sharing the forward pass's erfc with this
  # recomputation, which would keep that array alive for the backward pass.
  x = jax.lax.optimization_barrier(x)
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  # erfc, as jax.nn.gelu has it, keeps the far negative tail accurate.
  cdf = 0.5 * jax.lax.erfc(-xf * math.sqrt(0.5))
  pdf = jnp.exp(-0.5 * xf * xf) / math.sqrt(2.0 * math.pi)
  return ((g * (cdf + xf * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _stats(x, epsilon):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.maximum(jnp.mean(xf * xf, axis=-1, keepdims=True) - mean * mean, 0.0)
  return xf, mean, jax.lax.rsqrt(var + epsilon)


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
  """(y, mean, inverse deviation) over the last axis."""
  xf, mean, inv = _stats(x, epsilon)
  return ((xf - mean) * (inv * scale) + bias).astype(dtype), mean, inv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, epsilon, dtype):
  return _layer_norm_forward(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
  y, mean, inv = _layer_norm_forward(x, scale, bias, epsilon, dtype)
  return y, (x, mean, inv, scale)


def _layer_norm_bwd(epsilon, dtype, residuals, g):
  del epsilon, dtype
  x, mean, inv, scale = residuals
  xhat = (x.astype(mean.dtype) - mean) * inv
  gf = g.astype(mean.dtype)
  reduce_axes = tuple(range(x.ndim - 1))
  gx = gf * scale
  dx = inv * (
    gx - jnp.mean(gx, axis=-1, keepdims=True) - xhat * jnp.mean(gx * xhat, axis=-1, keepdims=True)
  )
  return (
    dx.astype(x.dtype),
    jnp.sum(gf * xhat, axis=reduce_axes).astype(scale.dtype),
    jnp.sum(gf, axis=reduce_axes).astype(scale.dtype),
  )


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """flax's `nn.LayerNorm` over the last axis, with its parameters (`scale`, `bias`)."""

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    dtype = jnp.dtype(self.dtype or jnp.result_type(x, scale))
    return _layer_norm(x, scale, bias, float(self.epsilon), dtype)
