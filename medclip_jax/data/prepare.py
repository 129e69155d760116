r"""Converts a dataset into medclip_jax records (ArrayRecord shards + info).

    python -m medclip_jax.data.prepare --format=synthetic --output=DIR \
        [--seed=0] [--num_train=8000 --num_val=500 --num_test=1000] \
        [--image_size=64] [--num_shards=4]

writes DIR/{train,val,test}.array_record-*-of-* and DIR/dataset_info.json
(see medclip_jax.data.records).

Adding a format: write a builder function whose keyword arguments are named
like the flags it reads and which returns a `Source` (the records, lazily,
and the rule that assigns each record to a split), and register it in
`FORMATS`. The CLI passes each builder exactly the flags its signature names.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from medclip_jax.data import records
from medclip_jax.data import synthetic


class OptionError(ValueError):
  """A bad format name or option value (reported without a traceback)."""


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Yielded by a format instead of a record it could not convert."""

  id: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Source:
  """What a format builder returns.

  records: yields record dicts (and `Skipped` for inputs that failed), once.
  split_of: the split rule, record -> one of records.SPLITS; it must keep
    every group in a single split.
  labels: the label vocabularies the format defines; classes seen in the
    records are added to them in dataset_info.json.
  info: extra dataset_info.json fields (e.g. image_size, seed).
  """

  records: Iterable[dict | Skipped]
  split_of: Callable[[dict], str]
  labels: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _synthetic(
  seed: int = 0,
  num_train: int = 8000,
  num_val: int = 500,
  num_test: int = 1000,
  image_size: int = 64,
) -> Source:
  """The synthetic demo dataset (medclip_jax.data.synthetic)."""
  counts = {'train': num_train, 'val': num_val, 'test': num_test}
  for split, count in counts.items():
    if count < 0:
      raise OptionError(f'num_{split} must be >= 0, got {count}.')
  if image_size < 32:
    raise OptionError(f'image_size must be >= 32, got {image_size}.')

  def generate_all():
    for split, count in counts.items():
      yield from synthetic.generate(split, count, seed, image_size)

  def split_of(record: dict) -> str:
    # Each synthetic split has its own seed stream; the id names it.
    return record['id'].split('-')[1]

  return Source(
    records=generate_all(),
    split_of=split_of,
    labels=synthetic.LABELS,
    info={'image_size': image_size, 'seed': seed},
  )


FORMATS: dict[str, Callable[..., Source]] = {
  'synthetic': _synthetic,
}


def prepare(
  format: str,
  output: str,
  *,
  num_shards: int = 4,  # pylint: disable=redefined-builtin
  **options,
) -> dict:
  """Converts dataset `format` into `output`; returns the dataset info.

  `options` are the format builder's keyword arguments (for 'synthetic':
  seed, num_train, num_val, num_test, image_size). Raises OptionError for an
  unknown format or a bad option.
  """
  if format not in FORMATS:
    raise OptionError(f'unknown format {format!r}; known formats: {", ".join(sorted(FORMATS))}')
  if num_shards < 1:
    raise OptionError(f'num_shards must be >= 1, got {num_shards}.')
  builder = FORMATS[format]
  try:
    inspect.signature(builder).bind(**options)
  except TypeError as e:
    raise OptionError(f'format {format!r}: {e}') from e
  source = builder(**options)

  writers = {split: records.SplitWriter(output, split, num_shards) for split in records.SPLITS}
  skipped: list[dict] = []
  labels = {name: set(values) for name, values in source.labels.items()}
  caption_words: list[int] = []
  split_of_group: dict[str, str] = {}
  try:
    for item in source.records:
      if isinstance(item, Skipped):
        skipped.append({'id': item.id, 'reason': item.reason})
        continue
      split = source.split_of(item)
      if split not in writers:
        raise ValueError(
          f'The {format} split rule put {item.get("id")!r} in unknown split {split!r}.'
        )
      if split_of_group.setdefault(item['group'], split) != split:
        raise ValueError(
          f'The {format} split rule put group {item["group"]!r} in both '
          f'{split_of_group[item["group"]]!r} and {split!r}.'
        )
      writers[split].write(item)
      for name, value in item['labels'].items():
        labels.setdefault(name, set()).add(value)
      caption_words.append(len(item['caption'].split()))
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise

  splits = {}
  for split, writer in writers.items():
    paths = writer.close()
    splits[split] = {'count': writer.count, 'files': [os.path.basename(p) for p in paths]}
  info = {
    'format': format,
    'splits': splits,
    'converted': sum(s['count'] for s in splits.values()),
    'skipped': skipped,
    'labels': {name: sorted(values) for name, values in labels.items()},
    'caption_length': {
      'min': min(caption_words, default=0),
      'mean': round(sum(caption_words) / max(1, len(caption_words)), 2),
      'max': max(caption_words, default=0),
    },
    **source.info,
  }
  records.write_dataset_info(output, info)
  return info


FLAGS = flags.FLAGS
flags.DEFINE_string('format', None, f'Dataset format, one of: {", ".join(sorted(FORMATS))}.')
flags.DEFINE_string('output', None, 'Directory to write the dataset to.')
flags.DEFINE_integer('seed', 0, 'Random seed (synthetic: the data).')
flags.DEFINE_integer('num_train', 8000, 'synthetic: training examples.')
flags.DEFINE_integer('num_val', 500, 'synthetic: validation examples.')
flags.DEFINE_integer('num_test', 1000, 'synthetic: test examples.')
flags.DEFINE_integer('image_size', 64, 'Image side in pixels.')
flags.DEFINE_integer('num_shards', 4, 'ArrayRecord shards per split (fewer for a small split).')
flags.mark_flags_as_required(['format', 'output'])


def _options_from_flags(builder: Callable[..., Source]) -> dict:
  """The flag values named by the builder's keyword arguments."""
  names = inspect.signature(builder).parameters
  return {name: FLAGS[name].value for name in names if name in FLAGS}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.format not in FORMATS:
    sys.exit(
      f'prepare: unknown --format={FLAGS.format!r}; known formats: {", ".join(sorted(FORMATS))}'
    )
  start = time.time()
  try:
    info = prepare(
      FLAGS.format,
      FLAGS.output,
      num_shards=FLAGS.num_shards,
      **_options_from_flags(FORMATS[FLAGS.format]),
    )
  except OptionError as e:
    sys.exit(f'prepare: {e}')
  seconds = time.time() - start
  counts = ', '.join(
    f'{split} {s["count"]} ({len(s["files"])} shard{"" if len(s["files"]) == 1 else "s"})'
    for split, s in info['splits'].items()
  )
  print(
    f'Wrote {info["format"]} dataset to {FLAGS.output}: {counts}; '
    f'{len(info["skipped"])} skipped; {seconds:.1f} s.'
  )


if __name__ == '__main__':
  app.run(main)
