"""ResNet image encoder with torchvision's exact layout and parameter names.

The parameter tree mirrors torchvision's ``state_dict`` one-to-one (modules are
named ``conv1``, ``bn1``, ``layer1`` -> ``'0'`` -> ``downsample`` -> ``'0'``/``'1'``
...), so loading pretrained torchvision weights is a renaming table plus a
kernel transpose; see :func:`state_dict_names`.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from medclip_jax.interop import tables
from medclip_jax.model import cpu_ops, lean_layers

# torchvision initialises convs with kaiming_normal_(mode='fan_out',
# nonlinearity='relu'): an untruncated normal with std sqrt(2 / fan_out).
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

ModuleDef = Callable[..., nn.Module]

# The ResNet halves its input five times (stem conv, max-pool, three strided stages):
# its last feature grid has one cell per STRIDE x STRIDE pixels.
STRIDE = 32

# ResNet(remat=...) -> the jax.checkpoint policy each stage (layer1..layer4) is
# recomputed under in the backward pass: 'full' keeps only the stage's input,
# 'dots' keeps the convolution outputs too (BatchNorm and ReLU are recomputed).
# 'none' rematerialises nothing.
REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_saveable}


def _conv(features: int, kernel: int, stride: int, *, name: str, dtype: Any, ops: str) -> nn.Conv:
  # Explicit symmetric padding: 'SAME' pads asymmetrically for stride 2,
  # which would not match PyTorch (and pretrained weights) exactly.
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_conv_init,
    conv_general_dilated=cpu_ops.conv_general_dilated if ops == 'cpu' else None,
    name=name,
  )


class _Downsample(nn.Module):
  """conv1x1 + BN shortcut, named '0' and '1' like torchvision's Sequential."""

  features: int
  stride: int
  norm: ModuleDef
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, 1, self.stride, name='0')(x)
    return self.norm(name='1')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""

  planes: int
  stride: int
  norm: ModuleDef
  conv: ModuleDef

  expansion = 1

  @nn.compact
  def __call__(self, x):
    out = self.conv(self.planes, 3, self.stride, name='conv1')(x)
    out = self.norm(name='bn1')(out, relu=True)
    out = self.conv(self.planes, 3, 1, name='conv2')(out)
    return self.norm(name='bn2')(out, residual=_shortcut(self, x), relu=True)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (ResNet-50/101), v1.5: the stride sits on the 3x3 conv."""

  planes: int
  stride: int
  norm: ModuleDef
  conv: ModuleDef

  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.conv(self.planes, 1, 1, name='conv1')(x)
    out = self.norm(name='bn1')(out, relu=True)
    out = self.conv(self.planes, 3, self.stride, name='conv2')(out)
    out = self.norm(name='bn2')(out, relu=True)
    out = self.conv(self.planes * 4, 1, 1, name='conv3')(out)
    return self.norm(name='bn3')(out, residual=_shortcut(self, x), relu=True)


def _shortcut(block, x):
  # Same rule as torchvision: project whenever the shape changes.
  features = block.planes * block.expansion
  if block.stride != 1 or x.shape[-1] != features:
    return _Downsample(features, block.stride, block.norm, block.conv, name='downsample')(x)
  return x


class _Stage(nn.Module):
  """One of layer1..layer4: blocks named '0', '1', ... as in torchvision."""

  block: type
  planes: int
  num_blocks: int
  stride: int
  norm: ModuleDef
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      x = self.block(self.planes, stride, self.norm, self.conv, name=str(i))(x)
    return x


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


def _xla_max_pool(x, window, strides, padding):
  return nn.max_pool(x, window, strides=strides, padding=padding)


class ResNet(nn.Module):
  """torchvision ResNet without the fc head; returns pooled features [B, C] (and, asked,
  the feature grid they pool).

  C is ``8 * width`` for depths 18/34 and ``32 * width`` for 50/101
  (512 / 2048 at torchvision's width 64). Input is NHWC float images.
  """

  depth: int = 50
  width: int = 64
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  # 'cpu': convolutions and max-pool with gradients written for XLA's CPU
  # backend (`cpu_ops`); 'xla': XLA's own. The parameters are the same.
  ops: str = 'xla'
  # 'none' or a key of REMAT_POLICIES; the parameters are the same.
  remat: str = 'none'

  def __post_init__(self):
    if self.depth not in tables.RESNET_LAYOUTS:
      raise ValueError(
        f'Unsupported ResNet depth {self.depth}; expected one of {sorted(tables.RESNET_LAYOUTS)}.'
      )
    if self.ops not in ('cpu', 'xla'):
      raise ValueError(f"ResNet ops must be 'cpu' or 'xla', got {self.ops!r}.")
    if self.remat != 'none' and self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"ResNet remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {self.remat!r}."
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool, grid: bool = False):
    """Pooled features [B, C] float32; with `grid`, also the last stage's feature grid
    [B, H/32, W/32, C] (float32) they pool, for objectives that look at regions."""
    kind, layers = tables.RESNET_LAYOUTS[self.depth]
    block = _BLOCKS[kind]
    norm = functools.partial(
      lean_layers.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      param_dtype=jnp.float32,
    )
    conv = functools.partial(_conv, dtype=self.dtype, ops=self.ops)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.width, 7, 2, name='conv1')(x)
    x = norm(name='bn1')(x, relu=True)
    # Both pad with -inf, matching PyTorch's MaxPool2d(3, 2, padding=1).
    pool = cpu_ops.max_pool if self.ops == 'cpu' else _xla_max_pool
    x = pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    stage = _Stage
    if self.remat != 'none':
      # The train flag is bound in `norm`, so the stage takes only arrays: no static_argnums.
      stage = nn.remat(_Stage, policy=REMAT_POLICIES[self.remat])
    for i, num_blocks in enumerate(layers):
      x = stage(
        block,
        self.width * 2**i,
        num_blocks,
        1 if i == 0 else 2,
        norm,
        conv,
        name=f'layer{i + 1}',
      )(x)
    # Pool in float32 so low-precision compute still yields float32 features.
    x = x.astype(jnp.float32)
    pooled = jnp.mean(x, axis=(1, 2))
    return (pooled, x) if grid else pooled


_LEAF_TO_TORCH = {
  'params': {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'},
  'batch_stats': {'mean': 'running_mean', 'var': 'running_var'},
}


def state_dict_names(params, batch_stats) -> dict[str, tuple]:
  """Map each torchvision state_dict key to ``(collection, path)`` in our tree.

  ``collection`` is ``'params'`` or ``'batch_stats'``; ``path`` indexes that
  collection, e.g. ``'layer1.0.conv1.weight' -> ('params', ('layer1', '0',
  'conv1', 'kernel'))``. Conv kernels are HWIO here and OIHW in torch
  (transpose ``(2, 3, 1, 0)``). torchvision's ``fc.*`` and
  ``*.num_batches_tracked`` have no counterpart. Works on shape-only trees
  (``jax.eval_shape``) as well as real ones.
  """
  names = {}
  for collection, tree in (('params', params), ('batch_stats', batch_stats)):
    renames = _LEAF_TO_TORCH[collection]
    for path in traverse_util.flatten_dict(tree):
      torch_key = '.'.join(path[:-1] + (renames[path[-1]],))
      names[torch_key] = (collection, path)
  return names
