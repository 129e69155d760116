"""Tests for the ResNet, BERT and MedCLIP models (tiny configs: CPU compiles are slow)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from medclip_jax.models import BertEncoder, MedCLIP, ResNet
from medclip_jax.models import bert as bert_lib
from medclip_jax.models import resnet as resnet_lib

# The MedCLIP fixture reuses these exact shapes so JAX's per-op compile cache is hit.
IMAGE_SHAPE = (2, 32, 32, 3)
RESNET_WIDTH = 16
TINY_BERT = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
LENGTHS = (5, 8)
SEQ_LEN = 8


def _images():
  return jax.random.normal(jax.random.key(1), IMAGE_SHAPE)


def _text():
  ids = jax.random.randint(jax.random.key(2), (len(LENGTHS), SEQ_LEN), 1, TINY_BERT['vocab_size'])
  mask = (np.arange(SEQ_LEN)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
  return ids, jnp.asarray(mask)


def _capture(model, variables, path, *args, **kwargs):
  """Run ``model`` and return the output of the submodule at ``path``."""
  _, state = model.apply(
    variables,
    *args,
    capture_intermediates=lambda mdl, method: mdl.path == path and method == '__call__',
    mutable=['intermediates'],
    **kwargs,
  )
  node = state['intermediates']
  for name in path:
    node = node[name]
  return np.asarray(node['__call__'][0])


# ----------------------------------------------------------------------------- ResNet


@pytest.fixture(scope='module')
def resnets():
  models = {}
  for depth in (18, 50):
    model = ResNet(depth=depth, width=RESNET_WIDTH)
    models[depth] = (model, model.init(jax.random.key(0), _images(), train=False))
  return models


@pytest.mark.parametrize('depth, channels', [(18, 8 * RESNET_WIDTH), (50, 32 * RESNET_WIDTH)])
def test_resnet_output_shape(resnets, depth, channels):
  model, variables = resnets[depth]
  out = model.apply(variables, _images(), train=False)
  assert out.shape == (IMAGE_SHAPE[0], channels)
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
  images = _images()
  _, mutated = model.apply(variables, images, train=True, mutable=['batch_stats'])
  old = traverse_util.flatten_dict(variables['batch_stats'])
  new = traverse_util.flatten_dict(mutated['batch_stats'])
  assert old.keys() == new.keys()
  for key in old:
    assert not np.allclose(old[key], new[key]), key

  # flax momentum 0.9 == torch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic.
  stem = _capture(model, variables, ('conv1',), images, train=False)
  np.testing.assert_allclose(
    mutated['batch_stats']['bn1']['mean'], 0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5
  )
  np.testing.assert_allclose(
    mutated['batch_stats']['bn1']['var'], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4
  )


def test_resnet_eval_uses_batch_stats_and_train_ignores_them(resnets):
  model, variables = resnets[18]
  images = _images()
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
  images = np.asarray(_images())

  def capture(*path):
    return _capture(model, variables, path, _images(), train=False)

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
    _capture(model, variables, ('layer2', '0', name), _images(), train=False).shape
    for name in ('conv1', 'conv2')
  ]
  assert shapes == [(2, 8, 8, 2 * RESNET_WIDTH), (2, 4, 4, 2 * RESNET_WIDTH)]


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


# ----------------------------------------------------------------------------- BERT


@pytest.fixture(scope='module')
def bert():
  """Tiny BERT params; both poolings share the same parameter tree."""
  ids, mask = _text()
  variables = BertEncoder(**TINY_BERT).init(jax.random.key(0), ids, mask, train=False)
  models = {p: BertEncoder(**TINY_BERT, pooling=p) for p in ('cls', 'mean')}
  return models, variables


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_output_shape(bert, pooling):
  models, variables = bert
  ids, mask = _text()
  out = models[pooling].apply(variables, ids, mask, train=False)
  assert out.shape == (len(LENGTHS), TINY_BERT['hidden_size'])
  assert out.dtype == jnp.float32


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_ignores_masked_tokens(bert, pooling):
  models, variables = bert
  model = models[pooling]
  ids, mask = _text()
  out = model.apply(variables, ids, mask, train=False)

  padded_changed = jnp.where(mask == 0, (ids + 7) % TINY_BERT['vocab_size'], ids)
  assert not np.array_equal(padded_changed, ids)
  np.testing.assert_allclose(
    model.apply(variables, padded_changed, mask, train=False), out, rtol=0, atol=1e-6
  )

  real_changed = ids.at[:, 1].set((ids[:, 1] + 7) % TINY_BERT['vocab_size'])
  changed_out = model.apply(variables, real_changed, mask, train=False)
  for row in range(len(LENGTHS)):
    assert not np.allclose(changed_out[row], out[row], atol=1e-4)


def test_bert_pooling_matches_hidden_states(bert):
  models, variables = bert
  ids, mask = _text()
  hidden = _capture(models['cls'], variables, ('encoder',), ids, mask, train=False)
  np.testing.assert_allclose(
    models['cls'].apply(variables, ids, mask, train=False), hidden[:, 0], rtol=1e-6
  )
  m = np.asarray(mask, np.float32)[:, :, None]
  np.testing.assert_allclose(
    models['mean'].apply(variables, ids, mask, train=False),
    (hidden * m).sum(1) / m.sum(1),
    rtol=1e-5,
    atol=1e-6,
  )


def test_bert_dropout_only_in_training(bert):
  models, variables = bert
  model = models['cls']
  ids, mask = _text()
  eval_a = model.apply(variables, ids, mask, train=False)
  eval_b = model.apply(variables, ids, mask, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)

  train_a = model.apply(variables, ids, mask, train=True, rngs={'dropout': jax.random.key(3)})
  train_b = model.apply(variables, ids, mask, train=True, rngs={'dropout': jax.random.key(4)})
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)


def test_bert_default_token_types_are_zero(bert):
  models, variables = bert
  ids, mask = _text()
  np.testing.assert_array_equal(
    models['cls'].apply(variables, ids, mask, train=False),
    models['cls'].apply(variables, ids, mask, train=False, token_type_ids=jnp.zeros_like(ids)),
  )


def test_bert_rejects_bad_config_and_long_input(bert):
  with pytest.raises(ValueError, match='pooling'):
    BertEncoder(pooling='max')
  with pytest.raises(ValueError, match='divisible'):
    BertEncoder(hidden_size=30, num_heads=4)
  models, variables = bert
  too_long = jnp.ones((1, 600), jnp.int32)
  with pytest.raises(ValueError, match='max_position_embeddings'):
    models['cls'].apply(variables, too_long, too_long, train=False)


def test_bert_state_dict_names_match_huggingface(bert):
  _, variables = bert
  hidden, inter = TINY_BERT['hidden_size'], TINY_BERT['intermediate_size']
  expected = {
    'embeddings.word_embeddings.weight': (TINY_BERT['vocab_size'], hidden),
    'embeddings.position_embeddings.weight': (512, hidden),
    'embeddings.token_type_embeddings.weight': (2, hidden),
    'embeddings.LayerNorm.weight': (hidden,),
    'embeddings.LayerNorm.bias': (hidden,),
  }
  for i in range(TINY_BERT['num_layers']):
    p = f'encoder.layer.{i}'
    linears = {
      'attention.self.query': (hidden, hidden),
      'attention.self.key': (hidden, hidden),
      'attention.self.value': (hidden, hidden),
      'attention.output.dense': (hidden, hidden),
      'intermediate.dense': (inter, hidden),
      'output.dense': (hidden, inter),
    }
    for name, (out_f, in_f) in linears.items():
      expected[f'{p}.{name}.weight'] = (out_f, in_f)
      expected[f'{p}.{name}.bias'] = (out_f,)
    for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
      expected[f'{p}.{name}.weight'] = (hidden,)
      expected[f'{p}.{name}.bias'] = (hidden,)

  names = bert_lib.state_dict_names(variables['params'])
  assert set(names) == set(expected)
  for key, path in names.items():
    leaf = variables['params']
    for name in path:
      leaf = leaf[name]
    shape = leaf.shape
    if path[-1] == 'kernel':  # [in, out] -> HF Linear's [out, in]
      shape = shape[::-1]
    assert shape == expected[key], key


# ----------------------------------------------------------------------------- MedCLIP

EMBED_DIM = 16


def _clip(dtype=jnp.float32):
  return MedCLIP(
    image_encoder=ResNet(depth=18, width=RESNET_WIDTH, dtype=dtype),
    text_encoder=BertEncoder(**TINY_BERT, dtype=dtype),
    embed_dim=EMBED_DIM,
    dtype=dtype,
  )


@pytest.fixture(scope='module')
def clip():
  model = _clip()
  ids, mask = _text()
  variables = model.init(jax.random.key(0), _images(), ids, mask, train=False)
  return model, variables


def test_clip_param_tree(clip):
  _, variables = clip
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['params']) == {
    'image_encoder',
    'text_encoder',
    'image_projection',
    'text_projection',
    'logit_scale',
  }
  assert set(variables['batch_stats']) == {'image_encoder'}
  assert variables['params']['image_projection']['kernel'].shape == (
    8 * RESNET_WIDTH,
    EMBED_DIM,
  )
  assert variables['params']['text_projection']['kernel'].shape == (
    TINY_BERT['hidden_size'],
    EMBED_DIM,
  )


def test_clip_logit_scale_init(clip):
  model, variables = clip
  ids, mask = _text()
  param = variables['params']['logit_scale']
  _, _, returned = model.apply(variables, _images(), ids, mask, train=False)
  for scale in (param, returned):
    assert scale.shape == ()
    assert scale.dtype == jnp.float32
    assert not jnp.asarray(scale).weak_type
    np.testing.assert_allclose(scale, math.log(1 / 0.07), rtol=1e-6)


def test_clip_embeddings_are_unit_norm(clip):
  model, variables = clip
  ids, mask = _text()
  image_emb, text_emb, _ = model.apply(variables, _images(), ids, mask, train=False)
  for emb in (image_emb, text_emb):
    assert emb.shape == (IMAGE_SHAPE[0], EMBED_DIM)
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)

  # The towers are usable on their own through apply(method=...).
  np.testing.assert_allclose(
    model.apply(variables, _images(), train=False, method=MedCLIP.encode_image),
    image_emb,
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    model.apply(variables, ids, mask, train=False, method=MedCLIP.encode_text),
    text_emb,
    rtol=1e-6,
  )


def test_clip_low_precision_keeps_float32_params_and_outputs():
  ids, mask = _text()
  out, variables = jax.eval_shape(
    lambda: _clip(jnp.bfloat16).init_with_output(
      jax.random.key(0), _images(), ids, mask, train=False
    )
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  assert all(x.dtype == jnp.float32 for x in out)
