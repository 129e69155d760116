"""Exact GELU, LayerNorm and BatchNorm whose backward passes keep only their input
(BatchNorm: and its output).

Under `jax.grad`, `jax.nn.gelu(approximate=False)` keeps three or four arrays
the size of its input for the backward pass (the product, erfc, exp, and in
BERT a copy), and flax's `LayerNorm` three. Here GELU keeps its input and
LayerNorm its input and per-token mean and inverse deviation; the rest is
recomputed in the backward pass. The jitted gradient of BERT-base at batch
16 x 128 tokens then needs 1.46 instead of 2.15 GiB of XLA temporaries, and a
step on a CPU faults in fewer fresh pages (BENCHMARKS.md).

`BatchNorm` takes the residual add and ReLU that follow it in a ResNet block, so
the block's output is computed in one pass and the backward pass keeps BatchNorm's
input, the block's output and per-channel statistics (flax's BatchNorm and a
separate ReLU keep the pre-ReLU output as well, and their backward pass
materialises a normalised copy of the input). ResNet50's jitted
gradient at batch 16, 224 px, needs 1.26 instead of 1.93 GiB of temporaries.

Forward values are those of `jax.nn.gelu` and flax's `LayerNorm` and `BatchNorm`,
computed by the same operations in the same order (statistics in at least float32,
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


def _moments(x, axis, keepdims=False):
  """(x in at least float32, its mean, its E[x^2] - E[x]^2 variance clipped at zero)
  over `axis`: flax's fast variance, shared by LayerNorm and BatchNorm."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axis=axis, keepdims=keepdims)
  var = jnp.maximum(jnp.mean(xf * xf, axis=axis, keepdims=keepdims) - mean * mean, 0.0)
  return xf, mean, var


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
  """(y, mean, inverse deviation) over the last axis."""
  xf, mean, var = _moments(x, -1, keepdims=True)
  inv = jax.lax.rsqrt(var + epsilon)
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


def _batch_norm_act(x, scale, bias, mean, inv, residual, relu, dtype):
  """ReLU(x normalised, scaled and shifted, cast to `dtype`, plus `residual`), the ReLU
  and residual optional: flax BatchNorm's operations in its order, then the block's."""
  y = ((x - mean) * (inv * scale) + bias).astype(dtype)
  if residual is not None:
    y = y + residual
  return jax.nn.relu(y) if relu else y


def _batch_norm_forward(x, scale, bias, residual, epsilon, relu, dtype):
  """(output, batch mean, batch variance) over all axes but the last."""
  xf, mean, var = _moments(x, tuple(range(x.ndim - 1)))
  inv = jax.lax.rsqrt(var + epsilon)
  return _batch_norm_act(xf, scale, bias, mean, inv, residual, relu, dtype), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _batch_norm(x, scale, bias, residual, epsilon, relu, dtype, residual_dtype):
  """`residual_dtype` is None when `residual` is."""
  del residual_dtype
  return _batch_norm_forward(x, scale, bias, residual, epsilon, relu, dtype)


def _batch_norm_fwd(x, scale, bias, residual, epsilon, relu, dtype, residual_dtype):
  del residual_dtype
  out, mean, var = _batch_norm_forward(x, scale, bias, residual, epsilon, relu, dtype)
  # The output only for ReLU's mask; it is the next layer's input, so keeping it is free.
  return (out, mean, var), (x, out if relu else None, mean, var, scale)


def _batch_norm_bwd(epsilon, relu, dtype, residual_dtype, residuals, cotangents):
  del dtype
  x, out, mean, var, scale = residuals
  g, g_mean, g_var = cotangents
  if relu:
    g = jnp.where(out > 0, g, jnp.zeros((), g.dtype))
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  inv = jax.lax.rsqrt(var + epsilon)
  xf, gf = x.astype(mean.dtype), g.astype(mean.dtype)
  d_bias = jnp.sum(gf, axis=axes)
  # sum(g * x_hat) from sum(g * x): the reduction reads the arrays the backward
  # pass already holds instead of a normalised copy of x (a third less memory
  # for ResNet50's gradient, BENCHMARKS.md). It loses about |mean| / deviation
  # in relative accuracy, harmless in float32 for a convolution's outputs.
  d_scale = (jnp.sum(gf * xf, axis=axes) - mean * d_bias) * inv
  # Where E[x^2] - E[x]^2 was clipped to zero (a constant channel), no gradient
  # flows through the variance, as under autodiff.
  var_path = (var > 0).astype(mean.dtype)
  # dx = a * g + b + c * (x - mean), a, b and c per channel. The batch statistics
  # are outputs too (for the running averages): their cotangents g_mean and g_var
  # are zero in training but kept for exactness.
  a = scale * inv
  b = (g_mean - a * d_bias) / count
  c = var_path * (2 * g_var - a * inv * d_scale) / count
  dx = a * gf + b + c * (xf - mean)
  d_residual = None if residual_dtype is None else g.astype(residual_dtype)
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype), d_residual


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """flax's `nn.BatchNorm` over the last axis (the same `scale`, `bias` parameters and
  `mean`, `var` running statistics, E[x^2] - E[x]^2 variance), with the residual add and
  ReLU that follow it in a ResNet block fused into it: `bn(x, residual, relu=True)` is
  `relu(bn(x) + residual)`."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, residual=None, relu: bool = False):
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, features, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, features, self.param_dtype)
    dtype = jnp.dtype(self.dtype or jnp.result_type(x, scale))
    if self.use_running_average:
      inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
      return _batch_norm_act(x, scale, bias, ra_mean.value, inv, residual, relu, dtype)
    residual_dtype = None if residual is None else jnp.dtype(residual.dtype)
    out, mean, var = _batch_norm(
      x, scale, bias, residual, float(self.epsilon), relu, dtype, residual_dtype
    )
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return out
