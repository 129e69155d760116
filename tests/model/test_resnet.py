"""The ResNet image tower: shapes, BatchNorm, PyTorch's padding and strides, torchvision names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from medclip_jax.model import ResNet
from medclip_jax.model import resnet as resnet_lib
from tests import helpers


@pytest.fixture(scope='module')
def resnets():
  models = {}
  for depth in (18, 50):
    model = ResNet(depth=depth, width=helpers.RESNET_WIDTH)
    models[depth] = (model, model.init(jax.random.key(0), helpers.model_images(), train=False))
  return models


@pytest.mark.parametrize(
  'depth, channels', [(18, 8 * helpers.RESNET_WIDTH), (50, 32 * helpers.RESNET_WIDTH)]
)
def test_resnet_output_shape(resnets, depth, channels):
  model, variables = resnets[depth]
  out = model.apply(variables, helpers.model_images(), train=False)
  assert out.shape == (helpers.IMAGE_SHAPE[0], channels)
  assert out.dtype == jnp.float32


def test_resnet_full_size_output_shape():
  out = jax.eval_shape(
    lambda: ResNet(depth=50).init_with_output(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False
    )[0]
  )
  assert out.shape == (1, 2048)


def test_resnet_train_updates_batch_stats(resnets):
  model, variables = resnets[18]
  images = helpers.model_images()
  _, mutated = model.apply(variables, images, train=True, mutable=['batch_stats'])
  old = traverse_util.flatten_dict(variables['batch_stats'])
  new = traverse_util.flatten_dict(mutated['batch_stats'])
  assert old.keys() == new.keys()
  for key in old:
    assert not np.allclose(old[key], new[key]), key

  # flax momentum 0.9 == torch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic.
  stem = helpers.capture(model, variables, ('conv1',), images, train=False)
  np.testing.assert_allclose(
    mutated['batch_stats']['bn1']['mean'], 0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5
  )
  np.testing.assert_allclose(
    mutated['batch_stats']['bn1']['var'], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4
  )


def test_resnet_eval_uses_batch_stats_and_train_ignores_them(resnets):
  model, variables = resnets[18]
  images = helpers.model_images()
  train_out, mutated = model.apply(variables, images, train=True, mutable=['batch_stats'])
  updated = {**variables, 'batch_stats': mutated['batch_stats']}

  eval_old = model.apply(variables, images, train=False)
  eval_new = model.apply(updated, images, train=False)
  assert not np.allclose(eval_old, eval_new)

  train_again, _ = model.apply(updated, images, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(train_out, train_again, rtol=1e-5, atol=1e-6)


def _conv_ref(x, kernel, stride, pad):
  """NHWC/HWIO convolution with PyTorch's symmetric zero padding, in numpy."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
      out = out + window @ kernel[i, j]
  return out


def _maxpool_ref(x):
  """MaxPool2d(3, stride=2, padding=1) in numpy (padding never wins the max)."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  out_h = (x.shape[1] - 3) // 2 + 1
  out_w = (x.shape[2] - 3) // 2 + 1
  windows = [x[:, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2] for i in range(3) for j in range(3)]
  return np.max(windows, axis=0)


def test_resnet_padding_matches_pytorch(resnets):
  # 'SAME' padding is asymmetric for stride 2 on even sizes and would break
  # pretrained torchvision weights; compare against explicit symmetric padding.
  model, variables = resnets[18]
  params = variables['params']
  images = np.asarray(helpers.model_images())

  def capture(*path):
    return helpers.capture(model, variables, path, helpers.model_images(), train=False)

  np.testing.assert_allclose(
    capture('conv1'),
    _conv_ref(images, np.asarray(params['conv1']['kernel']), 2, 3),
    rtol=1e-4,
    atol=1e-4,
  )
  pooled = _maxpool_ref(np.maximum(capture('bn1'), 0.0))
  np.testing.assert_allclose(
    capture('layer1', '0', 'conv1'),
    _conv_ref(pooled, np.asarray(params['layer1']['0']['conv1']['kernel']), 1, 1),
    rtol=1e-4,
    atol=1e-4,
  )
  # BasicBlock strides its first 3x3 conv.
  np.testing.assert_allclose(
    capture('layer2', '0', 'conv1'),
    _conv_ref(capture('layer1'), np.asarray(params['layer2']['0']['conv1']['kernel']), 2, 1),
    rtol=1e-4,
    atol=1e-4,
  )


def test_resnet50_strides_the_3x3_conv(resnets):
  # ResNet v1.5 (torchvision): the stride-2 bottleneck downsamples in conv2, not conv1.
  model, variables = resnets[50]
  shapes = [
    helpers.capture(
      model, variables, ('layer2', '0', name), helpers.model_images(), train=False
    ).shape
    for name in ('conv1', 'conv2')
  ]
  assert shapes == [(2, 8, 8, 2 * helpers.RESNET_WIDTH), (2, 4, 4, 2 * helpers.RESNET_WIDTH)]


def _torchvision_state_dict_shapes(depth):
  """torchvision resnet{depth}.state_dict() key -> shape, from its known layout."""
  bottleneck = depth >= 50
  blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  expansion = 4 if bottleneck else 1
  shapes = {}

  def bn(prefix, channels):
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.{leaf}'] = (channels,)
    shapes[f'{prefix}.num_batches_tracked'] = ()

  shapes['conv1.weight'] = (64, 3, 7, 7)
  bn('bn1', 64)
  inplanes = 64
  for stage, num_blocks in enumerate(blocks):
    planes = 64 * 2**stage
    for b in range(num_blocks):
      p = f'layer{stage + 1}.{b}'
      if bottleneck:
        convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
      else:
        convs = [(planes, inplanes, 3), (planes, planes, 3)]
      for n, (out_c, in_c, k) in enumerate(convs, start=1):
        shapes[f'{p}.conv{n}.weight'] = (out_c, in_c, k, k)
        bn(f'{p}.bn{n}', out_c)
      stride = 2 if stage > 0 and b == 0 else 1
      if stride != 1 or inplanes != planes * expansion:
        shapes[f'{p}.downsample.0.weight'] = (planes * expansion, inplanes, 1, 1)
        bn(f'{p}.downsample.1', planes * expansion)
      inplanes = planes * expansion
  shapes['fc.weight'] = (1000, inplanes)
  shapes['fc.bias'] = (1000,)
  return shapes


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_resnet_state_dict_names_match_torchvision(depth):
  variables = jax.eval_shape(
    lambda: ResNet(depth=depth, width=64).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False
    )
  )
  names = resnet_lib.state_dict_names(variables['params'], variables['batch_stats'])
  expected = {
    key: shape
    for key, shape in _torchvision_state_dict_shapes(depth).items()
    if not key.startswith('fc.') and not key.endswith('.num_batches_tracked')
  }
  assert set(names) == set(expected)
  if depth == 50:
    assert len(names) == 265
  for key, (collection, path) in names.items():
    leaf = variables[collection]
    for name in path:
      leaf = leaf[name]
    shape = leaf.shape
    if len(shape) == 4:  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    assert shape == expected[key], key
    assert leaf.dtype == jnp.float32


def test_resnet_rejects_unsupported_depth():
  with pytest.raises(ValueError, match='depth 42'):
    ResNet(depth=42)
