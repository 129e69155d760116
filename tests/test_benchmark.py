"""The throughput benchmark on the demo config: input pipeline vs train step; its JSON
line, and the prepared GPU benchmark script run at tiny size on CPU."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

from configs import default
from configs import demo
from medclip_jax import benchmark
from medclip_jax import cli
from medclip_jax import flops
from medclip_jax.data import prepare
from medclip_jax.errors import UserError
from tests import helpers

# Every field of the JSON line (with --reference=torch the torch figures too).
FIELDS = (
  'step_seconds_median',
  'pairs_per_s',
  'pairs_per_s_per_device',
  'devices',
  'device_kind',
  'batch_size',
  'image_size',
  'text_tokens',
  'dtype',
  'image_dtype',
  'text_dtype',
  'image_remat',
  'text_remat',
  'grad_cache_chunks',
  'locked_towers',
  'text_features_cached',
  'flops_per_pair_analytic',
  'flops_per_pair_xla',
  'tflops_per_device',
  'mfu',
  'peak_flops_per_device',
  'peak_flops_source',
  'peak_memory_bytes',
  'peak_memory_source',
  'input_pairs_per_s',
  'input_to_step_ratio',
  'input_bound',
)
POSITIVE = (
  'step_seconds_median',
  'pairs_per_s',
  'pairs_per_s_per_device',
  'flops_per_pair_analytic',
  'flops_per_pair_xla',
  'tflops_per_device',
  'mfu',
  'peak_flops_per_device',
  'peak_memory_bytes',
  'input_pairs_per_s',
  'input_to_step_ratio',
)


def _check_figures(row):
  """Every field there, the numbers positive and finite, and consistent with each other."""
  assert set(FIELDS) <= set(row), set(FIELDS) - set(row)
  assert all(math.isfinite(row[k]) and row[k] > 0 for k in POSITIVE), row
  assert row['pairs_per_s'] == pytest.approx(row['batch_size'] / row['step_seconds_median'])
  assert row['mfu'] == pytest.approx(
    row['flops_per_pair_analytic'] * row['pairs_per_s_per_device'] / row['peak_flops_per_device']
  )
  assert row['input_bound'] == (row['input_pairs_per_s'] < row['pairs_per_s'])
  # No memory statistics on CPU: the compiled step's own.
  assert (row['peak_flops_source'], row['peak_memory_source']) == (
    'measured matmul',
    'memory_analysis',
  )


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
  assert results['input_pairs_per_s'] > 0 and results['pairs_per_s'] > 0
  assert results['pairs_per_s'] == pytest.approx(
    demo_config.train.batch_size / results['step_seconds_median']
  )
  assert results['input_to_step_ratio'] == pytest.approx(
    results['input_pairs_per_s'] / results['pairs_per_s']
  )
  assert results['tflops_per_device'] > 0  # XLA's cost analysis counted the step
  _check_figures(json.loads(benchmark.json_line(results).removeprefix('benchmark: ')))
  # The demo's locked MiniLM is cached: its step runs the image tower and the heads only.
  assert results['text_features_cached'] and results['locked_towers'] == ['text_encoder']
  assert results['glibc_tunables'] == os.environ.get('GLIBC_TUNABLES')
  assert results['flops_per_pair_analytic'] == pytest.approx(
    flops.pair_flops(demo_config, ['text_encoder'], text_cached=True)['total']
  )
  text = benchmark.format_results(demo_config, results)
  assert 'examples/s' in text and 'TFLOP/s per device' in text
  # Printed at the end of `make test` (conftest.py): the input/step ratio is a recorded figure.
  record_property('report', text)


def test_benchmark_without_data_is_a_user_error(tmp_path):
  config = demo.get_config()
  config.data.dir = str(tmp_path / 'nothing')
  with pytest.raises(UserError, match='No prepared dataset'):
    benchmark.run(config)


@pytest.mark.parametrize(
  'counts, message',
  [
    ({'steps': 0}, '--steps=0: give 1 or more'),
    ({'warmup': -1}, '--warmup=-1: give 0 or more'),
    ({'input_batches': 0}, '--input_batches=0: give 1 or more'),
  ],
)
def test_counts_that_time_nothing_are_refused_before_any_set_up(tmp_path, counts, message):
  config = demo.get_config()
  config.data.dir = str(tmp_path / 'nothing')  # refused before the data is even looked for
  with pytest.raises(UserError, match=message):
    benchmark.run(config, **counts)


def test_a_step_time_is_the_median_of_steps_timed_alone_after_the_warm_up():
  # The warm-up (where the step compiles) and one slow step do not move the figure.
  durations = iter([0.3, 0.01, 0.2, 0.01])

  def step():
    time.sleep(next(durations))

  seconds = benchmark.median_seconds(step, steps=3, warmup=1)
  assert 0.01 <= seconds < 0.1


def test_the_torch_reference_and_the_tower_breakdown_are_timed_on_the_same_batch(
  tiny_config, monkeypatch
):
  config = tiny_config()
  config.train.lr_multipliers.text_encoder = 0.0  # a locked tower: no gradients in either step
  # As if cli.run had restarted this process with huge pages: torch runs without them.
  added = {'GLIBC_TUNABLES': cli.HUGE_PAGES_TUNABLE, 'MEDCLIP_JAX_ADDED_GLIBC_TUNABLES': '1'}
  for name, value in added.items():
    monkeypatch.setenv(name, value)
  results = benchmark.run(
    config, steps=1, warmup=1, input_batches=2, reference='torch', towers=True
  )
  assert results['glibc_tunables'] == cli.HUGE_PAGES_TUNABLE
  assert results['torch_glibc_tunables'] is None
  assert all(os.environ[name] == value for name, value in added.items())
  assert results['speedup_over_torch'] == pytest.approx(
    results['torch_step_seconds'] / results['step_seconds_median']
  )
  assert results['locked_towers'] == ['text_encoder']
  # Its own process runs torch with this process's cores.
  assert results['torch_threads'] == len(os.sched_getaffinity(0))
  for side in ('jax', 'torch'):
    assert set(results['towers'][side]) == {'image', 'text'}
    assert all(seconds > 0 for seconds in results['towers'][side].values())
  text = benchmark.format_results(config, results)
  assert 'eager, ' in text and 'JAX is ' in text and 'JAX/torch' in text
  assert 'image (ResNet18 width 8, 32 px)' in text


def test_the_torch_reference_without_torch_says_how_to_install_it(tiny_config, monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    'find_spec',
    lambda name, *a: None if name == 'torch' else real_find_spec(name, *a),
  )
  with pytest.raises(UserError, match=r"pip install '\.\[torch\]'"):
    benchmark.run(tiny_config(), steps=1, warmup=1, input_batches=1, reference='torch')


def test_an_unknown_reference_is_a_user_error(tiny_config):
  with pytest.raises(UserError, match="the reference can only be 'torch'"):
    benchmark.run(tiny_config(), reference='tensorflow')


def test_the_gpu_benchmark_script_runs_its_ladder_at_tiny_size_on_cpu(tmp_path):
  # The interpreter the script runs, except that the benchmark at batch 16 runs
  # out of memory, as a GPU would: each ladder stops there, after batch 8.
  python = tmp_path / 'python'
  python.write_text(
    '#!/usr/bin/env bash\n'
    'if [[ " $* " == *" -m medclip_jax.benchmark "*"--config.train.batch_size=16 "* ]]; then\n'
    '  echo "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB." >&2\n'
    '  exit 1\n'
    'fi\n'
    f'exec {sys.executable} "$@"\n'
  )
  python.chmod(0o755)
  env = {**os.environ, 'PYTHON': str(python), 'WORK': str(tmp_path), 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
    ['bash', 'launch/gpu_benchmark.sh', '--tiny'],
    cwd=helpers.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=500,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  remats = ['none', 'full'] if 'remat' in default.get_config().model.image else ['none']
  rows = [json.loads(line) for line in (tmp_path / 'results.jsonl').read_text().splitlines()]
  assert [(r['batch_size'], r['image_remat'], r['text_remat']) for r in rows] == [
    (8, remat, remat) for remat in remats
  ]
  for row in rows:
    _check_figures(row)
    assert row['dtype'] == 'float32' and row['devices'] == 1
  assert result.stdout.count('MFU: ') == len(rows)  # each run's table printed
  summary = (tmp_path / 'summary.txt').read_text()
  for remat in remats:
    assert f'remat {remat}: largest batch that ran 8; out of memory at batch 16' in summary
