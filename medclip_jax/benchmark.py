"""Throughput benchmark: the input pipeline alone, then the train step alone.

    python -m medclip_jax.benchmark --config=configs/demo.py [--steps=10] [--reference=torch]
        [--towers]

Reads the config's prepared data (config.data.dir) and prints a short table,
then, as its last line, `benchmark: ` and one JSON object of every figure:
  - step_seconds_median: the jitted train step by itself, fed one batch again
    and again, each step timed alone after warm-up steps (the first compiles);
    pairs_per_s and pairs_per_s_per_device from it;
  - flops_per_pair_analytic: model FLOPs of one pair counted from the config
    (`medclip_jax.flops`: a trained tower 3 forward passes, a locked one 1, a
    cached locked text tower 0), and flops_per_pair_xla, XLA's cost analysis
    of the compiled step (None where absent; it also counts the optimizer and
    any recomputation), and tflops_per_device from XLA's count;
  - mfu: analytic model FLOP/s per device over peak_flops_per_device, the
    device's dense bf16 peak (peak_flops_source 'table': H100, H200, A100,
    TPU v4/v5e/v5p) or on CPU a measured float32 matrix product ('measured
    matmul'); None for a device the table lacks;
  - peak_memory_bytes: the device's peak bytes in use (peak_memory_source
    'memory_stats'), or where the device keeps none (CPU) the compiled step's
    arguments, outputs and temporaries ('memory_analysis');
  - input_pairs_per_s: the training pipeline by itself (read, decode, crop,
    tokenize and batch, with the config's reader threads and workers) in this
    process; input_to_step_ratio, and input_bound when it is below the rate
    the step consumes this process's rows at: then raise
    config.data.num_threads or config.data.workers;
  - the settings timed: devices, device_kind, batch_size, dtype (and each
    tower's), remat of each tower, grad_cache_chunks, and glibc_tunables (the
    process's GLIBC_TUNABLES: `cli.run` sets huge pages for large blocks and,
    on the CPU, heaps that keep what is freed, unless the user set it);
  - with --reference=torch, the same step in PyTorch eager on the same batch
    and threads (`torch_reference`, in a process of its own), and JAX's speed
    over it (torch_version, torch_threads, torch_glibc_tunables,
    torch_step_seconds, speedup_over_torch), its steps timed the same way;
  - with --towers, each tower's forward and backward alone (train mode), in
    JAX and, with --reference=torch, in PyTorch.
Every config field can be overridden as in main, e.g.
--config.train.batch_size=128. BENCHMARKS.md records the measured figures;
launch/gpu_benchmark.sh runs it over a ladder of batch sizes on a GPU.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax import flops as flops_lib
from medclip_jax.data import pipeline
from medclip_jax.errors import UserError
from medclip_jax.training import optimizer as optimizer_lib
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


def _peak_memory(compiled) -> tuple[int | None, str]:
  """(peak bytes, source): the first device's allocator peak ('memory_stats'), or where it
  keeps none (CPU) the compiled step's own footprint ('memory_analysis')."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get('peak_bytes_in_use'):
    return int(stats['peak_bytes_in_use']), 'memory_stats'
  memory = compiled.memory_analysis()
  if memory is None:
    return None, 'unknown'
  # The donated state's outputs reuse its arguments' buffers (the aliased bytes).
  total = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  return int(total), 'memory_analysis'


def median_seconds(fn, steps: int, warmup: int) -> float:
  """Median seconds of one call of `fn` (which runs one step to completion) over `steps`
  calls, each timed alone, after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_step(setup: Setup, local_batch: dict):
  """(step, compiled): a callable that runs one train step on `local_batch` to completion,
  carrying the state from call to call, and the executable it runs."""
  state = setup.init_state()
  batch = setup.global_batch(local_batch)
  step_fn = setup.train_step
  compiled = step_fn.lower(state, batch).compile()  # the executable the calls below run

  def step():
    nonlocal state
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)

  return step, compiled


def step_figures(setup: Setup, compiled, seconds: float) -> dict:
  """pairs/s, XLA's FLOPs and TFLOP/s per device and peak memory of a `seconds`-long step."""
  flops = _step_flops(compiled)
  batch_size = setup.config.train.batch_size
  memory, memory_source = _peak_memory(compiled)
  return {
    'step_seconds_median': seconds,
    'pairs_per_s': batch_size / seconds,
    'flops_per_pair_xla': None if flops is None else flops * jax.device_count() / batch_size,
    'tflops_per_device': None if flops is None else flops / seconds / 1e12,
    'peak_memory_bytes': memory,
    'peak_memory_source': memory_source,
  }


def _settings(config) -> dict:
  """What the step was timed with; `.get` reads configs from before per-tower dtypes, remat
  and gradient caching existed."""
  model = config.model
  return {
    'batch_size': config.train.batch_size,
    'image_size': config.data.image_size,
    'text_tokens': config.data.max_text_length,
    'dtype': model.dtype,
    'image_dtype': model.image.get('dtype', '') or model.dtype,
    'text_dtype': model.text.get('dtype', '') or model.dtype,
    'image_remat': model.image.get('remat', 'none'),
    'text_remat': model.text.get('remat', 'none'),
    'grad_cache_chunks': config.train.get('grad_cache_chunks', 0),
  }


def tower_steps(setup: Setup, local_batch: dict) -> dict:
  """{'image', 'text'}: callables that run each tower's forward and backward alone, in train
  mode, to completion."""
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
    'image': lambda: jax.block_until_ready(image_grad(params['image_encoder'])),
    'text': lambda: jax.block_until_ready(text_grad(params['text_encoder'])),
  }


def run(
  config,
  steps: int = 10,
  warmup: int = 2,
  input_batches: int = 20,
  reference: str = '',
  towers: bool = False,
) -> dict:
  """Every figure of the module docstring, by its JSON name; with `reference='torch'`
  PyTorch's step on the same batch, with `towers` each tower alone."""
  for flag, value, least in (
    ('steps', steps, 1),
    ('warmup', warmup, 0),
    ('input_batches', input_batches, 1),
  ):
    if value < least:
      raise UserError(f'--{flag}={value}: give {least} or more.')
  info = pipeline.dataset_info(config.data)  # or a UserError saying how to prepare the data
  if reference not in ('', 'torch'):
    raise UserError(f"--reference={reference!r}: the reference can only be 'torch'.")
  setup = Setup.create(config)
  # Before the pipeline's reader threads start, which would share a CPU's cores.
  peak, peak_source = flops_lib.peak_flops_per_device()
  # The step as training runs it: with a locked text tower's cached features, if used.
  features, _ = setup.locked_text_features(setup.abstract_state.params, info, placeholder=True)
  batches = setup.train_batches(text_features=features)
  input_rate = measure_input(batches, input_batches)
  # A copy: worker processes hand batches over in shared memory, which Python reports as
  # leaked if a batch still holds it at the exit.
  local_batch = {key: np.array(value) for key, value in next(batches).items()}
  batches.close()  # the readers (and worker processes) stop before anything is timed
  if reference == 'torch':
    from medclip_jax import torch_reference  # pylint: disable=import-outside-toplevel

    # First, and in a process of its own that has ended before JAX's step compiles: each
    # side timed with the other's memory gone (BENCHMARKS.md, 2026-12-06).
    torch_figures = torch_reference.measure(config, local_batch, steps, warmup, towers)
  step_fn, compiled = jax_step(setup, local_batch)
  step_seconds = median_seconds(step_fn, steps, warmup)
  if towers:
    tower_seconds = {
      tower: median_seconds(fn, steps, warmup)
      for tower, fn in tower_steps(setup, local_batch).items()
    }
  step = step_figures(setup, compiled, step_seconds)
  locked = optimizer_lib.locked_towers(config.train, setup.abstract_state.params)
  analytic = flops_lib.pair_flops(config, locked, text_cached=features is not None)['total']
  devices = jax.device_count()
  per_device = step['pairs_per_s'] / devices
  # This process's pipeline feeds this process's rows only.
  consumed = step['pairs_per_s'] / jax.process_count()
  results = {
    'step_seconds_median': step['step_seconds_median'],
    'pairs_per_s': step['pairs_per_s'],
    'pairs_per_s_per_device': per_device,
    'devices': devices,
    'device_kind': jax.devices()[0].device_kind,
    **_settings(config),
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
    'locked_towers': locked,
    'text_features_cached': features is not None,
    'flops_per_pair_analytic': analytic,
    'flops_per_pair_xla': step['flops_per_pair_xla'],
    'tflops_per_device': step['tflops_per_device'],
    'mfu': None if peak is None else analytic * per_device / peak,
    'peak_flops_per_device': peak,
    'peak_flops_source': peak_source,
    'peak_memory_bytes': step['peak_memory_bytes'],
    'peak_memory_source': step['peak_memory_source'],
    'input_pairs_per_s': input_rate,
    'input_to_step_ratio': input_rate / consumed,
    'input_bound': input_rate < consumed,
  }
  if reference == 'torch':
    results['torch_version'] = torch_figures['version']
    results['torch_threads'] = torch_figures['threads']
    results['torch_glibc_tunables'] = torch_figures['glibc_tunables']
    results['torch_step_seconds'] = torch_figures['step']
    results['speedup_over_torch'] = torch_figures['step'] / step_seconds
  if towers:
    results['towers'] = {'jax': tower_seconds}
    if reference == 'torch':
      results['towers']['torch'] = {tower: torch_figures[tower] for tower in tower_seconds}
  return results


def json_line(results: dict) -> str:
  """The line the command prints last: 'benchmark: ' and the results as one JSON object."""
  return 'benchmark: ' + json.dumps(results, allow_nan=False)


def format_results(config, results: dict) -> str:
  """The short human table printed before the JSON line."""
  r = results
  dtypes = {r['image_dtype'], r['text_dtype']}
  dtype = dtypes.pop() if len(dtypes) == 1 else f'image {r["image_dtype"]}, text {r["text_dtype"]}'
  chunks = r['grad_cache_chunks']
  gflop = lambda flops: f'{flops / 1e9:.4g} GFLOP'
  xla = r['flops_per_pair_xla']
  memory = r['peak_memory_bytes']
  return '\n'.join(
    [
      f'{r["devices"]} {jax.devices()[0].platform} device(s) ({r["device_kind"]}), global batch '
      f'{r["batch_size"]}, image {r["image_size"]} px, text {r["text_tokens"]} tokens, {dtype}, '
      f'remat image {r["image_remat"]} / text {r["text_remat"]}'
      + (f', gradient cache {chunks} chunks' if chunks > 1 else ''),
      f'input pipeline: {r["input_pairs_per_s"]:10.1f} examples/s'
      + (' (input-bound: the step waits for data)' if r['input_bound'] else ''),
      f'train step:     {r["pairs_per_s"]:10.1f} pairs/s, {r["pairs_per_s_per_device"]:.1f} per '
      f'device ({r["step_seconds_median"] * 1e3:.0f} ms/step, median)'
      + (", the locked text tower's features cached" if r['text_features_cached'] else ''),
      f'input / step:   {r["input_to_step_ratio"]:10.1f}x',
      f'FLOPs per pair: {gflop(r["flops_per_pair_analytic"])} (model)'
      + (
        ''
        if xla is None
        else f', {gflop(xla)} (XLA: {r["tflops_per_device"]:.3f} TFLOP/s per device)'
      ),
      f'MFU:            {r["mfu"]:10.1%} of {r["peak_flops_per_device"] / 1e12:.4g} TFLOP/s per '
      f'device ({r["peak_flops_source"]})'
      if r['mfu'] is not None
      else f'MFU:            unknown (no peak FLOP/s for {r["device_kind"]!r})',
      'peak memory:    '
      + ('unknown' if memory is None else f'{memory / 2**30:10.3f} GiB')
      + f' ({r["peak_memory_source"]})',
      *_reference_lines(config, results),
    ]
  )


def _reference_lines(config, results: dict) -> list[str]:
  lines = []
  if 'torch_step_seconds' in results:
    seconds = results['torch_step_seconds']
    lines.append(
      f'PyTorch {results["torch_version"]} eager, {results["torch_threads"]} threads: '
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
  print(json_line(results))


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
