"""Shared fixtures: one tiny synthetic dataset and a tiny config for every test.

Compiled executables are shared through JAX's persistent compilation cache by
every test and every process a test starts (training subprocesses, pytest-xdist
workers), so a step that several tests run compiles once per session. It must
be set before jax is imported, and it is fresh for each session.
"""

import os
import shutil
import tempfile

# The first process (pytest, or xdist's controller) makes the cache and removes it at the end.
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='medclip_jax_tests_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# Tests compile far more than they run (tiny towers, a few steps): without LLVM's
# optimisations XLA compiles about a third faster. Results differ from an optimised
# build's in the last bits (elementwise code is generated differently), so every
# process a test compares must compile alike: those the tests start inherit these
# flags (helpers.xla_flags). Speed is measured by the benchmarks, never here.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0 '
    '--xla_llvm_disable_expensive_passes=true'
  ).strip()

import pytest  # noqa: E402  (after the cache settings)

from configs import demo  # noqa: E402
from medclip_jax.data import prepare  # noqa: E402


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
  """Prints what tests recorded under 'report' (e.g. the benchmark's table), also under xdist."""
  for report in terminalreporter.stats.get('passed', []):
    for name, text in report.user_properties:
      if name == 'report':
        terminalreporter.write_line(f'\n{report.nodeid}:\n{text}')


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """A synthetic dataset small enough to train on in seconds."""
  out = tmp_path_factory.mktemp('tiny_data')
  prepare.prepare(
    'synthetic', str(out), num_train=96, num_val=8, num_test=48, image_size=32, seed=0
  )
  return str(out)


# The demo config shrunk to tiny towers and 12 steps: applied to config
# objects by `tiny_config` and passed as --config.* flags by `tiny_flags`.
TINY = {
  'data.image_size': 32,
  # In-process reading: auto workers on a many-core machine would start processes per test.
  'data.workers': 0,
  'data.max_text_length': 24,
  'model.embed_dim': 32,
  'model.image.width': 8,
  'model.text.init': '',  # a tiny random text tower instead of MiniLM
  'model.text.hidden_size': 32,
  'model.text.num_layers': 1,
  'model.text.num_heads': 2,
  'model.text.intermediate_size': 64,
  'train.lr_multipliers.text_encoder': 1.0,
  'train.batch_size': 16,
  'train.steps': 12,
  'train.warmup_steps': 2,
  'train.log_every': 1,
  'train.checkpoint_every': 6,
  'eval.batch_size': 16,
  'eval.bn_recompute_batches': 2,
  # Caption metrics (Java) and probes have tests of their own; tiny runs skip them.
  'evals.caption.type': 'off',
  'evals.linear_probe.type': 'off',
  'eval.report': False,
}


@pytest.fixture(scope='session')
def tiny_config(tiny_data):
  """Makes fresh copies of the tiny config."""

  def make():
    config = demo.get_config()
    config.data.dir = tiny_data
    config.update_from_flattened_dict(TINY)
    return config

  return make


@pytest.fixture(scope='session')
def tiny_flags(tiny_data):
  """Command-line flags giving the tiny config, with `overrides` on top."""

  def make(**overrides):
    values = {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}
    return ['--config=configs/demo.py', f'--config.data.dir={tiny_data}'] + [
      f'--config.{path}={value}' for path, value in values.items()
    ]

  return make


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, tiny_config):
  """(config, workdir, results) of a 12-step tiny run that no test modifies."""
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  workdir = tmp_path_factory.mktemp('trained_run')
  results = trainer.train_and_evaluate(config, str(workdir))
  return config, workdir, results
