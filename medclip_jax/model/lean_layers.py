"""Exact GELU and LayerNorm whose backward passes keep only their input.

Under `jax.grad`, `jax.nn.gelu(approximate=False)` saves four arrays the size
of BERT's feed-forward activations for its backward pass (the product, erfc,
exp and a copy) and flax's `LayerNorm` four the size of the hidden states.
Here each keeps its input (LayerNorm also its per-token mean and inverse
deviation) and recomputes the rest in the backward pass: XLA's temporaries for
BERT-base's gradient at batch 16 x 128 tokens fall from 2.15 to 1.46 GiB, and
on a CPU, where each step's temporaries are fresh pages to fault in, the full
CLIP step gets faster too (BENCHMARKS.md).

Forward values follow `jax.nn.gelu` and flax's `LayerNorm` (statistics in at
least float32, E[x^2] - E[x]^2 variance, scale folded into the inverse
deviation); gradients equal JAX's own to float rounding
(tests/model/test_lean_layers.py).
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
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  cdf = 0.5 * (1.0 + jax.lax.erf(xf / math.sqrt(2.0)))
  pdf = jnp.exp(-0.5 * xf * xf) / math.sqrt(2.0 * math.pi)
  return ((g * (cdf + xf * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _stats(x, epsilon):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.maximum(jnp.mean(xf * xf, axis=-1, keepdims=True) - mean * mean, 0.0)
  return xf, mean, jax.lax.rsqrt(var + epsilon)


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
  xf, mean, inv = _stats(x, epsilon)
  return ((xf - mean) * (inv * scale) + bias).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, epsilon, dtype):
  return _layer_norm_forward(x, scale, bias, epsilon, dtype)


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
  _, mean, inv = _stats(x, epsilon)
  return _layer_norm_forward(x, scale, bias, epsilon, dtype), (x, mean, inv, scale)


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
