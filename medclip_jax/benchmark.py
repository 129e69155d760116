"""Throughput benchmark: the input pipeline alone, then the train step alone.

    python -m medclip_jax.benchmark --config=configs/demo.py [--steps=10] [--reference=torch]
        [--towers]

Reads the config's prepared data (config.data.dir) and prints
  - input: examples/s of the training pipeline by itself (read, decode, crop,
    tokenize and batch, with the config's reader threads and workers);
  - step: pairs/s of the jitted train step by itself, fed one batch again and
    again, timed after warm-up steps (the first compiles), and the step's
    TFLOP/s per device from XLA's cost analysis;
  - their ratio. Below a few times, the devices wait for input: raise
    config.data.num_threads or config.data.workers;
  - with --reference=torch, the same step in PyTorch eager on the same batch
    and threads (`torch_reference`), and JAX's speed over it;
  - with --towers, each tower's forward and backward alone (train mode), in
    JAX and, with --reference=torch, in PyTorch.
Every config field can be overridden as in main, e.g.
--config.train.batch_size=128. BENCHMARKS.md records the measured figures.
"""

import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.data import pipeline
from medclip_jax.errors import UserError
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


def _timed(fn, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def measure_towers(setup: Setup, local_batch: dict, steps: int, warmup: int) -> dict:
  """{'image', 'text'}: seconds of each tower's forward and backward alone, in train mode."""
  variables = setup.init_state().variables()
  batch = setup.global_batch(local_batch)
  data = setup.config.data
  images = pipeline.normalize(batch['image'], tuple(data.mean), tuple(data.std))
  model, params = setup.model, variables['params']

  def image_loss(p):
    stats = {'batch_stats': variables['batch_stats']['image_encoder']}
    out, _ = model.image_encoder.apply(
      {'params': p, **stats}, images, train=True, mutable=['batch_stats']
    )
    return jnp.sum(jnp.square(out))

  def text_loss(p):
    out = model.text_encoder.apply(
      {'params': p},
      batch['input_ids'],
      batch['attention_mask'],
      train=True,
      rngs={'dropout': jax.random.PRNGKey(0)},
    )
    return jnp.sum(jnp.square(out))

  image_grad, text_grad = jax.jit(jax.grad(image_loss)), jax.jit(jax.grad(text_loss))
  return {
    'image': _timed(lambda: image_grad(params['image_encoder']), steps, warmup),
    'text': _timed(lambda: text_grad(params['text_encoder']), steps, warmup),
  }


def run(
  config,
  steps: int = 10,
  warmup: int = 2,
  input_batches: int = 20,
  reference: str = '',
  towers: bool = False,
) -> dict:
  """Both measurements and their ratio (input examples/s over step pairs/s); with
  `reference='torch'` PyTorch's step on the same batch, with `towers` each tower alone."""
  info = pipeline.dataset_info(config.data)  # or a UserError saying how to prepare the data
  if reference not in ('', 'torch'):
    raise UserError(f"--reference={reference!r}: the reference can only be 'torch'.")
  setup = Setup.create(config)
  # The step as training runs it: with a locked text tower's cached features, if used.
  features, _ = setup.locked_text_features(setup.abstract_state.params, info, placeholder=True)
  batches = setup.train_batches(text_features=features)
  results = {'input_examples_per_s': measure_input(batches, input_batches)}
  results['text_features_cached'] = features is not None
  local_batch = next(batches)
  results.update(measure_step(setup, local_batch, steps, warmup))
  results['input_to_step_ratio'] = results['input_examples_per_s'] / results['step_pairs_per_s']
  if towers:
    results['towers'] = {'jax': measure_towers(setup, local_batch, steps, warmup)}
  if reference == 'torch':
    from medclip_jax import torch_reference  # pylint: disable=import-outside-toplevel

    torch_seconds = torch_reference.step_seconds(config, local_batch, steps, warmup)
    results['torch_step_seconds'] = torch_seconds
    results['speedup_over_torch'] = torch_seconds / results['step_seconds']
    if towers:
      results['towers']['torch'] = torch_reference.tower_seconds(config, local_batch, steps, warmup)
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
      + ')'
      + (", the locked text tower's features cached" if results['text_features_cached'] else ''),
      f'input / step:   {results["input_to_step_ratio"]:8.1f}x',
      *_reference_lines(config, results),
    ]
  )


def _reference_lines(config, results: dict) -> list[str]:
  lines = []
  if 'torch_step_seconds' in results:
    import torch  # pylint: disable=import-outside-toplevel

    seconds = results['torch_step_seconds']
    lines.append(
      f'PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads: '
      f'{config.train.batch_size / seconds:8.1f} pairs/s ({seconds * 1e3:.0f} ms/step); '
      f'JAX is {results["speedup_over_torch"]:.2f}x its speed'
    )
  towers = results.get('towers')
  if towers:
    image, text = config.model.image, config.model.text
    names = {
      'image': f'image (ResNet{image.depth} width {image.width}, {config.data.image_size} px)',
      'text': f'text (BERT {text.num_layers}x{text.hidden_size}, '
      f'{config.data.max_text_length} tokens)',
    }
    lines.append(
      'forward + backward alone, ms:   JAX   ' + ('torch  JAX/torch' if 'torch' in towers else '')
    )
    for key, name in names.items():
      row = f'  {name}: {towers["jax"][key] * 1e3:7.0f}'
      if 'torch' in towers:
        row += (
          f' {towers["torch"][key] * 1e3:7.0f}  {towers["torch"][key] / towers["jax"][key]:.2f}x'
        )
      lines.append(row)
  return lines


def _define_flags():
  # Defined only when run as the command, so that importing `benchmark` defines no flags.
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('steps', 10, 'Train steps timed (after the warm-up).')
  flags.DEFINE_integer('warmup', 2, 'Untimed train steps first (the first compiles).')
  flags.DEFINE_integer('input_batches', 20, 'Input batches timed.')
  flags.DEFINE_string('reference', '', "'torch': also time the same step in PyTorch eager.")
  flags.DEFINE_bool('towers', False, "Also time each tower's forward and backward alone.")
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  config = FLAGS.config
  results = run(
    config, FLAGS.steps, FLAGS.warmup, FLAGS.input_batches, FLAGS.reference, FLAGS.towers
  )
  print(format_results(config, results))


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
