"""The throughput benchmark on the demo config: input pipeline vs train step."""

import pytest

from configs import demo
from medclip_jax import benchmark
from medclip_jax.data import prepare
from medclip_jax.errors import UserError


@pytest.fixture(scope='module')
def demo_config(tmp_path_factory):
  """The demo config at full size, on a small synthetic dataset at demo resolution."""
  out = tmp_path_factory.mktemp('demo_sized_data')
  prepare.prepare('synthetic', str(out), num_train=192, num_val=0, num_test=0, image_size=64)
  config = demo.get_config()
  config.data.dir = str(out)
  return config


def test_benchmark_reports_input_and_step_rates_of_the_demo(demo_config, record_property):
  results = benchmark.run(demo_config, steps=3, warmup=2, input_batches=10)
  assert results['input_examples_per_s'] > 0 and results['step_pairs_per_s'] > 0
  assert results['step_pairs_per_s'] == pytest.approx(
    demo_config.train.batch_size / results['step_seconds']
  )
  assert results['input_to_step_ratio'] == pytest.approx(
    results['input_examples_per_s'] / results['step_pairs_per_s']
  )
  assert results['tflops_per_device'] > 0  # XLA's cost analysis counted the step
  text = benchmark.format_results(demo_config, results)
  assert 'examples/s' in text and 'TFLOP/s per device' in text
  # Printed at the end of `make test` (conftest.py): the input/step ratio is a recorded figure.
  record_property('report', text)


def test_benchmark_without_data_is_a_user_error(tmp_path):
  config = demo.get_config()
  config.data.dir = str(tmp_path / 'nothing')
  with pytest.raises(UserError, match='No prepared dataset'):
    benchmark.run(config)


def test_the_torch_reference_and_the_tower_breakdown_are_timed_on_the_same_batch(tiny_config):
  config = tiny_config()
  config.train.lr_multipliers.text_encoder = 0.0  # a locked tower: no gradients in either step
  results = benchmark.run(
    config, steps=1, warmup=1, input_batches=2, reference='torch', towers=True
  )
  assert results['speedup_over_torch'] == pytest.approx(
    results['torch_step_seconds'] / results['step_seconds']
  )
  for side in ('jax', 'torch'):
    assert set(results['towers'][side]) == {'image', 'text'}
    assert all(seconds > 0 for seconds in results['towers'][side].values())
  text = benchmark.format_results(config, results)
  assert 'eager, ' in text and 'JAX is ' in text and 'JAX/torch' in text
  assert 'image (ResNet18 width 8, 32 px)' in text


def test_an_unknown_reference_is_a_user_error(tiny_config):
  with pytest.raises(UserError, match="the reference can only be 'torch'"):
    benchmark.run(tiny_config(), reference='tensorflow')
