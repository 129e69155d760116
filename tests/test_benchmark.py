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
