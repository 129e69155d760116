"""Convolution and max-pool whose gradients run fast on XLA's CPU backend.

With YNNPACK's convolutions switched off (`medclip_jax/__init__.py` sets the
flag), XLA's CPU convolution gradients run at about its forward speed for 3x3
and 7x7 kernels on feature maps of useful size; what stays slow, measured in
BENCHMARKS.md, is what `conv` here replaces:

- 1x1 convolutions: a matmul over the (strided) pixels, forward and backward;
- convolutions on small feature maps (at most `SMALL_MAP` pixels, e.g. layer4's
  2x2 maps at 64 px), where XLA's convolutions are dominated by overhead:
  im2col (the k*k shifted views of the padded input, stacked) times the kernel
  as one matmul forward, its transpose backward, each tap of the input
  gradient placed on the strided grid it came from (an interior-padded add).

Max-pool's backward routes each output gradient to the first maximum of its
window in row-major order, as XLA's does, with k*k compares and
interior-padded adds instead of a select-and-scatter.

The results equal XLA's own gradients to float rounding
(tests/model/test_cpu_ops.py); `ResNet(ops='cpu')` uses them, with the same
parameters.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _taps(x_padded, kh, kw, strides, out_hw):
  """The kh*kw views x_padded[:, i::s, j::s] of the output's size, row-major."""
  b, _, _, c = x_padded.shape
  (sh, sw), (ho, wo) = strides, out_hw
  return [
    lax.slice(
      x_padded, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1)
    )
    for i in range(kh)
    for j in range(kw)
  ]


def _place(values, offset, strides, padded_hw):
  """`values` [B, Ho, Wo, C] put at rows offset[0] + k*sh, columns offset[1] + k*sw of a
  zero array [B, *padded_hw, C]."""
  (i, j), (sh, sw), (hp, wp) = offset, strides, padded_hw
  ho, wo = values.shape[1:3]
  zero = jnp.zeros((), values.dtype)
  return lax.pad(
    values,
    zero,
    [
      (0, 0, 0),
      (i, hp - i - ((ho - 1) * sh + 1), sh - 1),
      (j, wp - j - ((wo - 1) * sw + 1), sw - 1),
      (0, 0, 0),
    ],
  )


# Feature maps of at most this many pixels are convolved by im2col and a matmul.
SMALL_MAP = 16


def _out_hw(x_shape, w_shape, strides, padding):
  (top, bottom), (left, right) = padding
  return (
    (x_shape[1] + top + bottom - w_shape[0]) // strides[0] + 1,
    (x_shape[2] + left + right - w_shape[1]) // strides[1] + 1,
  )


def _patches(x, kh, kw, strides, padding):
  """im2col: [B, Ho, Wo, kh*kw*C], the taps in row-major order."""
  (top, bottom), (left, right) = padding
  x_padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_hw = _out_hw(x.shape, (kh, kw), strides, padding)
  return jnp.concatenate(_taps(x_padded, kh, kw, strides, out_hw), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, strides, padding):
  """NHWC x HWIO convolution as im2col and one matmul; `padding` ((top, bottom), (left,
  right)), no dilation."""
  kh, kw, cin, cout = w.shape
  return _patches(x, kh, kw, strides, padding) @ w.reshape(kh * kw * cin, cout)


def _conv_fwd(x, w, strides, padding):
  return conv(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, g):
  x, w = residuals
  kh, kw, cin, cout = w.shape
  b, h, wd, _ = x.shape
  (top, bottom), (left, right) = padding
  patches = _patches(x, kh, kw, strides, padding).reshape(-1, kh * kw * cin)
  dw = jnp.matmul(patches.T, g.reshape(-1, cout), preferred_element_type=jnp.float32)
  dw = dw.reshape(w.shape).astype(w.dtype)
  # Each tap's share of the input gradient, put back where that tap read.
  ho, wo = g.shape[1:3]
  per_tap = (g @ w.reshape(kh * kw * cin, cout).T).reshape(b, ho, wo, kh * kw, cin)
  padded_hw = (h + top + bottom, wd + left + right)
  dx = jnp.zeros((b, *padded_hw, cin), g.dtype)
  for n in range(kh * kw):
    dx = dx + _place(per_tap[:, :, :, n], divmod(n, kw), strides, padded_hw)
  return dx[:, top : top + h, left : left + wd].astype(x.dtype), dw


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """`lax.conv_general_dilated` for flax's `nn.Conv(conv_general_dilated=...)`: `conv` for
  1x1 kernels and small feature maps (explicit padding, no dilation, one group), XLA's
  convolution otherwise."""
  plain = (
    not isinstance(padding, str)
    and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    and feature_group_count == 1
    and lhs.ndim == 4
    and _is_nhwc(lhs, rhs, dimension_numbers)
  )
  if not (plain and (rhs.shape[:2] == (1, 1) or lhs.shape[1] * lhs.shape[2] <= SMALL_MAP)):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
    )
  return conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == nhwc


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window, strides, padding):
  """NHWC max-pool over `window` (kh, kw), padding with -inf like PyTorch's MaxPool2d."""
  return _max_pool_forward(x, window, strides, padding)


def _max_pool_forward(x, window, strides, padding):
  return lax.reduce_window(
    x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0))
  )


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool_forward(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  (top, bottom), (left, right) = padding
  h, wd = x.shape[1:3]
  padded_hw = (h + top + bottom, wd + left + right)
  x_padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  dx = jnp.zeros((x.shape[0], *padded_hw, x.shape[3]), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  views = _taps(x_padded, *window, strides, y.shape[1:3])
  for n, view in enumerate(views):
    first = (view == y) & ~taken  # the window's first maximum, row-major
    taken = taken | first
    dx = dx + _place(jnp.where(first, g, 0), divmod(n, window[1]), strides, padded_hw)
  return (dx[:, top : top + h, left : left + wd],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
