"""Throughput benchmark: the input pipeline alone, then the train step alone.

    python -m medclip_jax.benchmark --config=configs/demo.py [--steps=10]

Reads the config's prepared data (config.data.dir) and prints
  - input: examples/s of the training pipeline by itself (read, decode, crop,
    tokenize and batch, with the config's reader threads and workers);
  - step: pairs/s of the jitted train step by itself, fed one batch again and
    again, timed after warm-up steps (the first compiles), and the step's
    TFLOP/s per device from XLA's cost analysis;
  - their ratio. Below a few times, the devices wait for input: raise
    config.data.num_threads or config.data.workers.
Every config field can be overridden as in main, e.g.
--config.train.batch_size=128. BENCHMARKS.md records the measured figures.
"""

import time

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.data import pipeline
from medclip_jax.training.setup import Setup


def measure_input(batches_iter, batches: int) -> float:
  """Examples per second `batches_iter` delivers, after one warm-up batch."""
  local_batch = len(next(batches_iter)['image'])  # starts the reader threads (and workers)
  start = time.perf_counter()
  for _ in range(batches):
    next(batches_iter)
  return batches * local_batch / (time.perf_counter() - start)


def _step_flops(compiled) -> float | None:
  """FLOPs of one step per device, from XLA's cost analysis (None if absent)."""
  flops = (compiled.cost_analysis() or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def measure_step(setup: Setup, local_batch: dict, steps: int, warmup: int) -> dict:
  """Seconds per train step on `local_batch`, pairs/s and TFLOP/s per device."""
  step_fn = setup.train_step
  state = setup.init_state()
  batch = setup.global_batch(local_batch)
  flops = _step_flops(step_fn.lower(state, batch).compile())
  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  return {
    'step_seconds': seconds,
    'step_pairs_per_s': setup.config.train.batch_size / seconds,
    'tflops_per_device': None if flops is None else flops / seconds / 1e12,
  }


def run(config, steps: int = 10, warmup: int = 2, input_batches: int = 20) -> dict:
  """Both measurements and their ratio (input examples/s over step pairs/s)."""
  pipeline.dataset_info(config.data)  # or a UserError saying how to prepare the data
  setup = Setup.create(config)
  batches = setup.train_batches()
  results = {'input_examples_per_s': measure_input(batches, input_batches)}
  results.update(measure_step(setup, next(batches), steps, warmup))
  results['input_to_step_ratio'] = results['input_examples_per_s'] / results['step_pairs_per_s']
  return results


def format_results(config, results: dict) -> str:
  tflops = results['tflops_per_device']
  return '\n'.join(
    [
      f'{jax.device_count()} {jax.devices()[0].platform} device(s), global batch '
      f'{config.train.batch_size}, image {config.data.image_size} px, '
      f'text {config.data.max_text_length} tokens',
      f'input pipeline: {results["input_examples_per_s"]:8.1f} examples/s',
      f'train step:     {results["step_pairs_per_s"]:8.1f} pairs/s '
      f'({results["step_seconds"] * 1e3:.0f} ms/step'
      + ('' if tflops is None else f', {tflops:.3f} TFLOP/s per device')
      + ')',
      f'input / step:   {results["input_to_step_ratio"]:8.1f}x',
    ]
  )


def _define_flags():
  # Defined only when run as the command, so that importing `benchmark` defines no flags.
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('steps', 10, 'Train steps timed (after the warm-up).')
  flags.DEFINE_integer('warmup', 2, 'Untimed train steps first (the first compiles).')
  flags.DEFINE_integer('input_batches', 20, 'Input batches timed.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  config = FLAGS.config
  results = run(config, FLAGS.steps, FLAGS.warmup, FLAGS.input_batches)
  print(format_results(config, results))


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
