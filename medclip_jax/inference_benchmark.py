"""Inference benchmark: bulk embedding against one image at a time, captions and a search.

    python -m medclip_jax.inference_benchmark --model=runs/demo --data=data/demo \
        [--images=1000] [--captions=200] [--text="MRI of the brain"]

On a trained model (a workdir or an export) and a prepared dataset, prints
  - embed: images/s of `predict embed`'s path (`MedCLIP.index`: batched, the
    compiled functions reused) and of as many single-image `encode_images`
    calls, both after a warm-up, the median of three rounds, and their ratio;
  - caption: for the first --captions test images, captioned by retrieval from
    the training captions as `predict caption --bank-data` does, how often the
    top-1 caption names the image's own label values (--labels);
  - search: the --top_k test images nearest --text, with their labels.
A caption names a value when it holds one of the value's words: the synthetic
captions' words (`data/synthetic/labels.py`) for the synthetic format, else
the value itself. BENCHMARKS.md records the measured figures.
"""

import re
import time

import numpy as np

from absl import app
from absl import flags

from medclip_jax import cli
from medclip_jax.data import records
from medclip_jax.data import synthetic
from medclip_jax.errors import UserError


def label_namer(data_dir: str):
  """names(text, label, value) for the dataset's captions (see the module docstring)."""
  if records.read_dataset_info(data_dir).get('format') == 'synthetic':
    return synthetic.names
  return lambda text, label, value: bool(
    re.search(r'(?<![\w-])' + re.escape(value) + r'(?![\w-])', text, re.IGNORECASE)
  )


def measure_embed(model, images: list, rounds: int = 3) -> dict:
  """images/s of model.index(images) and of one encode_images call per image, each after
  compiling the batch shapes it uses; `rounds` rounds of both, alternating, and the median
  of each (one round takes about a second, and this machine's speed drifts)."""
  for n in {model.batch_size, len(images) % model.batch_size} - {0}:
    model.index(images[:n])
  model.encode_images(images[0])
  batched, single = [], []
  for _ in range(rounds):
    start = time.perf_counter()
    model.index(images)
    batched.append(time.perf_counter() - start)
    start = time.perf_counter()
    for image in images:
      model.encode_images(image)
    single.append(time.perf_counter() - start)
  batched_s, single_s = float(np.median(batched)), float(np.median(single))
  return {
    'images': len(images),
    'rounds': rounds,
    'batched_s': batched_s,
    'single_s': single_s,
    'batched_images_per_s': len(images) / batched_s,
    'single_images_per_s': len(images) / single_s,
    'speedup': single_s / batched_s,
  }


def measure_captions(model, rows: list[dict], bank: list[str], labels: list[str], names) -> dict:
  """How often the top-1 bank caption of each row's image names its labels."""
  start = time.perf_counter()
  top1 = [found[0][0] for found in model.caption([r['image'] for r in rows], bank, top_k=1)]
  seconds = time.perf_counter() - start
  hits = {
    label: [names(c, label, r['labels'][label]) for c, r in zip(top1, rows)] for label in labels
  }
  every = [all(h[i] for h in hits.values()) for i in range(len(rows))]
  return {
    'images': len(rows),
    'bank': len(bank),
    'seconds': seconds,
    'all_named': sum(every) / len(rows),
    **{f'{label}_named': sum(h) / len(rows) for label, h in hits.items()},
    'examples': list(zip([r['id'] for r in rows[:3]], top1[:3])),
  }


def _define_flags():
  flags.DEFINE_string('model', None, 'A training workdir or an export directory.')
  flags.DEFINE_string('data', None, 'The prepared dataset it was trained on.')
  flags.DEFINE_integer('images', 1000, 'embed: test images embedded both ways.')
  flags.DEFINE_integer('captions', 200, 'caption: test images captioned.')
  flags.DEFINE_list('labels', ['body_part', 'modality'], 'caption: the labels to name.')
  flags.DEFINE_string('text', 'MRI of the brain', 'search: the query.')
  flags.DEFINE_integer('top_k', 5, 'search: how many images.')
  flags.mark_flags_as_required(['model', 'data'])


def run(FLAGS) -> list[str]:
  from medclip_jax import inference  # pylint: disable=import-outside-toplevel

  model = inference.MedCLIP.load(FLAGS.model)
  try:
    test = list(records.read_records(records.split_files(FLAGS.data, 'test')))
    train = records.read_records(records.split_files(FLAGS.data, 'train'))
    bank = [c for r in train for c in records.captions(r)]
  except FileNotFoundError as e:
    raise UserError(f'{FLAGS.data} lacks a prepared split: {e}') from e
  if not test or not bank:
    raise UserError(f'{FLAGS.data} needs test and train records.')
  lines = [f'model: {model.describe()}']

  embed = measure_embed(model, [r['image'] for r in test[: FLAGS.images]])
  lines.append(
    f'embed {embed["images"]} test images (median of {embed["rounds"]} rounds): predict embed '
    f'{embed["batched_images_per_s"]:.1f} images/s ({embed["batched_s"]:.2f} s), single '
    f'encode_images calls {embed["single_images_per_s"]:.1f} images/s ({embed["single_s"]:.2f} '
    f's): {embed["speedup"]:.1f}x'
  )

  names = label_namer(FLAGS.data)
  captions = measure_captions(model, test[: FLAGS.captions], bank, FLAGS.labels, names)
  named = ', '.join(f'{label} {captions[f"{label}_named"]:.1%}' for label in FLAGS.labels)
  lines.append(
    f'caption {captions["images"]} test images from {captions["bank"]} training captions '
    f'({captions["seconds"]:.1f} s): top-1 names {" and ".join(FLAGS.labels)} for '
    f'{captions["all_named"]:.1%} ({named})'
  )
  lines += [f'  {i}: {c}' for i, c in captions['examples']]

  index = model.index([r['image'] for r in test], ids=[r['id'] for r in test])
  found = model.search(FLAGS.text, index, FLAGS.top_k)
  by_id = {r['id']: r for r in test}
  lines.append(f'search {FLAGS.text!r} over {len(test)} test images, top {FLAGS.top_k}:')
  for record_id, _, similarity in found:
    labels = by_id[record_id]['labels']
    lines.append(f'  {similarity:.3f}  {record_id}  ' + ' '.join(labels.values()))
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  lines = run(flags.FLAGS)
  print('\n'.join(lines))


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
