"""Input benchmark: the training pipeline alone on prepared JPEGs, in images/s and per core.

    python -m medclip_jax.data.input_benchmark [--dir=DIR] [--images=256] [--side=512]
        [--image_size=224] [--batch_size=64] [--examples=4096]

Renders --images synthetic radiographs (medclip_jax.data.synthetic, grey) at
--side pixels, saves them as JPEGs (quality 90) with a manifest CSV of their
captions in --dir/input_benchmark (a temporary directory by default), prepares them with
`python -m medclip_jax.data.prepare --format=manifest` (the records keep the
JPEG bytes), then times `pipeline.train_iterator` (read, decode at reduced
size, random crop to --image_size, tokenize to 64 tokens with the bundled
MiniLM tokenizer, batch) over --examples examples after one warm-up batch,
with two settings:
  - 1 reader thread and no worker processes (one core);
  - config.data.workers=-1 (auto) with the default 2 reader threads.
Each prints a line with images/s and images/s per core: over the cores the
setting keeps busy (its workers, or its reader threads in-process, at most the
cores this process may use). The last line is `input_benchmark: ` and one JSON
object of every figure and setting (cores available, workers, threads, sizes).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_collections
import numpy as np
from absl import app
from absl import flags
from PIL import Image

from medclip_jax import cli
from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.data import synthetic
from medclip_jax.data import tokenizer
from medclip_jax.errors import UserError


def write_jpegs(directory: str, count: int, side: int) -> str:
  """`count` synthetic images of `side` px as JPEGs in DIRECTORY/images, and the manifest
  CSV (columns image, caption) naming them; returns the CSV's path."""
  os.makedirs(os.path.join(directory, 'images'), exist_ok=True)
  rows = []
  for index in range(count):
    rng = np.random.default_rng([0, index])
    labels = synthetic.sample_labels(rng)
    pixels, place = synthetic.render(labels, rng, side)
    name = f'images/{index:05d}.jpg'
    Image.fromarray(pixels, 'L').save(os.path.join(directory, name), quality=90)
    rows.append((name, synthetic.caption(rng, labels, place)))
  path = os.path.join(directory, 'manifest.csv')
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('image', 'caption'))
    writer.writerows(rows)
  return path


def data_config(directory: str, image_size: int, num_threads: int, workers: int):
  """The config.data fields the pipeline reads, at configs/default.py's values, for the
  prepared `directory` with these settings."""
  return ml_collections.ConfigDict(
    dict(
      dir=directory,
      tfds_name='',
      train_split='train',
      image_size=image_size,
      crop_scale=(0.8, 1.0),
      hflip_prob=0.0,
      laterality='swap',
      train_text='caption',
      tokenizer=tokenizer.BUNDLED_MINILM,
      max_text_length=64,
      num_threads=num_threads,
      prefetch=64,
      workers=workers,
    )
  )


def measure(config, batch_size: int, examples: int) -> dict:
  """images/s of the training iterator for `config` over `examples` (rounded up to whole
  batches) after one warm-up batch, which starts its threads and workers."""
  batches = pipeline.train_iterator(
    config, seed=0, local_batch_size=batch_size, process_index=0, process_count=1
  )
  next(batches)
  count = -(-examples // batch_size)
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  rate = count * batch_size / (time.perf_counter() - start)
  batches.close()
  workers = pipeline.worker_count(config.workers)
  busy = workers or min(config.num_threads, pipeline.available_cores())
  return {
    'threads': config.num_threads,
    'workers_setting': config.workers,
    'workers': workers,
    'cores_busy': busy,
    'images_per_s': round(rate, 1),
    'images_per_s_per_core': round(rate / busy, 1),
  }


def run(directory: str, images: int, side: int, image_size: int, batch_size: int, examples: int):
  """Writes and prepares the JPEGs in `directory`, then times both settings; returns
  (printed lines, figures)."""
  path = write_jpegs(directory, images, side)
  prepared = os.path.join(directory, 'prepared')
  shutil.rmtree(prepared, ignore_errors=True)
  command = [sys.executable, '-m', 'medclip_jax.data.prepare', '--format=manifest']
  options = [f'--input={path}', f'--output={prepared}', f'--max_side={side}']
  subprocess.run([*command, *options, '--val_fraction=0', '--test_fraction=0'], check=True)
  info = records.read_dataset_info(prepared)
  stored = list(records.read_records(records.split_files(prepared, 'train')))
  figures = {
    'cores_available': pipeline.available_cores(),
    'images': images,
    'side': side,
    'image_size': image_size,
    'batch_size': batch_size,
    'examples': examples,
    'stored_as': info['images_stored_as'],
    'stored_kb_mean': round(sum(len(r['image']) for r in stored) / len(stored) / 1024, 1),
    'settings': [
      measure(data_config(prepared, image_size, threads, workers), batch_size, examples)
      for threads, workers in ((1, 0), (2, -1))
    ],
  }
  lines = [
    f'{images} JPEGs of {side} px in {directory}: stored as {figures["stored_as"]}, '
    f'{figures["stored_kb_mean"]} kB each; {figures["cores_available"]} cores available; '
    f'crops of {image_size} px, tokenized, batches of {batch_size}'
  ]
  for s in figures['settings']:
    lines.append(
      f'  {s["threads"]} thread(s), workers={s["workers_setting"]} ({s["workers"]} workers): '
      f'{s["images_per_s"]:.0f} images/s, {s["images_per_s_per_core"]:.0f} per core '
      f'({s["cores_busy"]} busy)'
    )
  return lines, figures


def _define_flags() -> None:
  flags.DEFINE_string(
    'dir',
    '',
    'Where to keep the JPEGs and records, in DIR/input_benchmark (default: a temporary directory).',
  )
  flags.DEFINE_integer('images', 256, 'Number of JPEGs to write (the pipeline repeats them).')
  flags.DEFINE_integer('side', 512, 'Side of the JPEGs, in pixels.')
  flags.DEFINE_integer('image_size', 224, 'Side of the training crops (config.data.image_size).')
  flags.DEFINE_integer('batch_size', 64, 'Examples per batch.')
  flags.DEFINE_integer('examples', 4096, 'Examples timed per setting.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  for name in ('images', 'side', 'image_size', 'batch_size', 'examples'):
    if f[name].value < 1:
      raise UserError(f'--{name}={f[name].value}: give 1 or more.')
  with tempfile.TemporaryDirectory(prefix='medclip_input_benchmark_') as scratch:
    # A folder of its own inside --dir: the files there are replaced at each run, and a
    # dataset's own manifest.csv or images/ in --dir are left alone.
    directory = os.path.join(f.dir, 'input_benchmark') if f.dir else scratch
    lines, figures = run(directory, f.images, f.side, f.image_size, f.batch_size, f.examples)
  print('\n'.join(lines))
  print('input_benchmark: ' + json.dumps(figures))


def console_main() -> None:
  """What `python -m medclip_jax.data.input_benchmark` runs."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
