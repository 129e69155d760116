"""Model FLOPs per training pair and the devices' peak FLOP/s (medclip_jax/flops.py)."""

import types

import jax
import jax.numpy as jnp
import pytest

from configs import default
from medclip_jax import flops
from medclip_jax.model import BertEncoder
from medclip_jax.model import ResNet
from medclip_jax.objectives import attmim
from medclip_jax.objectives import entmlm

# torchvision's published multiply-adds of each ResNet at 224 px (its docs'
# "GFLOPS"); its 1000-class fc layer, which our towers lack, is under 0.1% of them.
TORCHVISION_GMACS = {18: 1.81, 34: 3.66, 50: 4.09, 101: 7.80}


def _full_size():
  """ResNet50 at 224 px + BERT-base at 128 tokens, as the issue counts them."""
  config = default.get_config()
  config.data.max_text_length = 128
  return config


@pytest.mark.parametrize('depth', sorted(TORCHVISION_GMACS))
def test_resnet_forward_flops_match_torchvision_figures(depth):
  gflop = flops.resnet_forward_flops(depth, 64, 224) / 1e9
  assert gflop == pytest.approx(2 * TORCHVISION_GMACS[depth], rel=0.01)


def test_a_full_size_training_pair_costs_about_92_gflop():
  counts = flops.pair_flops(_full_size())
  assert counts['image'] / 1e9 == pytest.approx(24.6, rel=0.02)  # 3 x 8.2
  assert counts['text'] / 1e9 == pytest.approx(67.0, rel=0.02)  # 3 x 22.3
  assert counts['total'] / 1e9 == pytest.approx(92.0, rel=0.02)
  assert counts['total'] == pytest.approx(sum(v for k, v in counts.items() if k != 'total'))


def test_a_locked_tower_costs_one_forward_pass_and_a_cached_one_nothing():
  config = _full_size()
  trained = flops.pair_flops(config)
  locked = flops.pair_flops(config, locked=('text_encoder',))
  cached = flops.pair_flops(config, locked=('text_encoder',), text_cached=True)
  assert locked['text'] == pytest.approx(trained['text'] / 3)
  assert locked['image'] == trained['image']
  assert cached['text'] == 0 and cached['image'] == trained['image']
  frozen_image = flops.pair_flops(config, locked=('image_encoder',))
  assert frozen_image['image'] == pytest.approx(trained['image'] / 3)


def _xla_flops(module, *inputs):
  """XLA's cost analysis of `module`'s inference forward on abstract inputs (lowered only)."""
  variables = jax.eval_shape(
    lambda *x: module.init(jax.random.PRNGKey(0), *x, train=False), *inputs
  )
  forward = jax.jit(lambda v, *x: module.apply(v, *x, train=False))
  return forward.lower(variables, *inputs).cost_analysis()['flops']


def test_the_counts_describe_the_towers_medclip_builds():
  # XLA's count skips the taps that fall on padding and adds normalisation and
  # activations: within a few percent at full size.
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  resnet = _xla_flops(ResNet(depth=50, width=64, ops='xla'), image)
  assert resnet == pytest.approx(flops.resnet_forward_flops(50, 64, 224), rel=0.05)
  tokens = jax.ShapeDtypeStruct((1, 128), jnp.int32)
  bert = BertEncoder(
    vocab_size=30522,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
  )
  assert _xla_flops(bert, tokens, tokens) == pytest.approx(
    flops.bert_forward_flops(12, 768, 3072, 128), rel=0.03
  )
  assert flops.resnet_features(50, 64) == 2048 and flops.resnet_features(18, 16) == 128


@pytest.mark.parametrize(
  'kind, peak',
  [
    ('NVIDIA H100 80GB HBM3', 989e12),
    ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H200', 989e12),
    ('NVIDIA A100-SXM4-80GB', 312e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5', 459e12),
    ('TPU v5p', 459e12),
  ],
)
def test_accelerator_peaks_come_from_the_table_by_device_kind(kind, peak):
  device = types.SimpleNamespace(platform='gpu' if 'NVIDIA' in kind else 'tpu', device_kind=kind)
  assert flops.peak_flops_per_device(device) == (peak, 'table')


def test_an_accelerator_the_table_lacks_has_no_peak():
  device = types.SimpleNamespace(platform='gpu', device_kind='NVIDIA GeForce GTX 1080')
  assert flops.peak_flops_per_device(device) == (None, 'unknown')


@pytest.mark.parametrize(
  'objective, queries, context, outputs',
  # EntMLM: the caption's tokens read the image's cells, a vocabulary-sized head.
  # AttMIM: the cells read the tokens, a head of 32 x 32 x 3 pixels.
  [(entmlm, (128, 768), (49, 2048), 30522), (attmim, (49, 2048), (128, 768), 3072)],
)
def test_the_decoder_count_describes_mmclips_decoders(objective, queries, context, outputs):
  config = _full_size()
  decoder = objective.decoder(config)
  inputs = (
    jax.ShapeDtypeStruct((1, *queries), jnp.float32),
    jax.ShapeDtypeStruct((1, queries[0]), bool),
    jax.ShapeDtypeStruct((1, *context), jnp.float32),
    jax.ShapeDtypeStruct((1, context[0]), bool),
  )
  variables = jax.eval_shape(lambda *x: decoder.init(jax.random.PRNGKey(0), *x), *inputs)
  xla = jax.jit(decoder.apply).lower(variables, *inputs).cost_analysis()['flops']
  assert decoder.out_features == outputs
  counted = flops.decoder_forward_flops(decoder, *queries, *context, queries[0])
  assert xla == pytest.approx(counted, rel=0.02)


def test_mmclips_objectives_add_a_masked_pass_and_their_decoders():
  config = _full_size()
  clip = flops.pair_flops(config)
  config.objectives = {'infonce': 1.0, 'sigmoid': 0.0, 'attmim': 1.0, 'entmlm': 1.0}
  both = flops.pair_flops(config)
  # The masked image and caption each cost their tower's pass again, plus a decoder.
  assert both['attmim'] > clip['image'] and both['entmlm'] > clip['text']
  assert both['total'] == pytest.approx(sum(v for k, v in both.items() if k != 'total'))
  assert both['total'] / clip['total'] == pytest.approx(2.05, abs=0.05)
  locked = flops.pair_flops(config, locked=('text_encoder',))
  decoder = both['entmlm'] - clip['text']
  assert locked['entmlm'] == pytest.approx(clip['text'] / 3 + decoder)
  config.objectives = {'infonce': 1.0, 'sigmoid': 0.0, 'attmim': 0.0, 'entmlm': 0.0}
  assert flops.pair_flops(config) == clip
