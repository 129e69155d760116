r"""Converts a dataset into medclip_jax records (ArrayRecord shards + info).

    python -m medclip_jax.data.prepare --format=synthetic --output=DIR \
        [--seed=0] [--num_train=8000 --num_val=500 --num_test=1000] \
        [--image_size=64] [--num_shards=4]
    python -m medclip_jax.data.prepare --format=manifest --input=FILE.csv \
        --output=DIR [--image_column=image --caption_column=caption] \
        [--label_columns=a,b] [--group_column=patient]
    python -m medclip_jax.data.prepare --format=medpix --input=EXPORT.csv ...
    python -m medclip_jax.data.prepare --format=roco --input=ROCO_DIR ...

writes DIR/{train,val,test}.array_record-*-of-* and DIR/dataset_info.json
(see medclip_jax.data.records). Real formats ('manifest', 'medpix', 'roco')
also take [--max_side=512] [--limit=0] [--seed=0] [--val_fraction=0.05
--test_fraction=0.1] [--max_bad_fraction=0.05]: inputs that cannot be read
are skipped and listed in dataset_info.json, but if more than
max_bad_fraction of them fail, nothing is written.

Adding a format: write a builder function whose keyword arguments are named
like the flags it reads and which returns a `Source` (the records, lazily,
and the rule that assigns each record to a split), and register it in
`FORMATS`. The CLI passes each builder exactly the flags its signature names.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import inspect
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from medclip_jax import errors
from medclip_jax.data import ingest
from medclip_jax.data import records
from medclip_jax.data import synthetic


class OptionError(ValueError):
  """A bad format name or option value (reported without a traceback)."""


class TooManyBadRecords(errors.UserError):
  """More inputs failed than the format's max_bad_fraction allows."""


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
  info: extra dataset_info.json fields (e.g. image_size, seed); read after
    the records are exhausted, so a format may fill it while yielding them.
  max_bad_fraction: if set, prepare fails (writing nothing) when more than
    this fraction of the inputs are skipped.
  """

  records: Iterable[dict | Skipped]
  split_of: Callable[[dict], str]
  labels: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  max_bad_fraction: float | None = None


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


# ----------------------------------------------------------------------------
# Real formats: each reads its inputs into `_Entry`s, which `_real_source`
# converts (skipping bad ones), splits and limits the same way.


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One input of a real format, before its image and caption are checked."""

  id: str
  group: str
  image: str  # path
  caption: str | bytes
  labels: Mapping[str, str]


def _check_real_options(
  format: str,  # pylint: disable=redefined-builtin
  input: str | None,  # pylint: disable=redefined-builtin
  want_dir: bool,
  val_fraction: float,
  test_fraction: float,
  limit: int,
  max_side: int,
  max_bad_fraction: float,
) -> None:
  if not input:
    raise OptionError(
      f'format {format!r} needs --input (the dataset {"directory" if want_dir else "file"}).'
    )
  if not os.path.exists(input):
    raise OptionError(f'--input={input!r} does not exist.')
  if want_dir != os.path.isdir(input):
    raise OptionError(
      f'format {format!r}: --input={input!r} must be a {"directory" if want_dir else "file"}.'
    )
  if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
    raise OptionError(
      f'val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 '
      'and add up to less than 1.'
    )
  if limit < 0:
    raise OptionError(f'limit must be >= 0 (0 = all), got {limit}.')
  if max_side < 16:
    raise OptionError(f'max_side must be >= 16, got {max_side}.')
  if not 0 <= max_bad_fraction <= 1:
    raise OptionError(f'max_bad_fraction must be in [0, 1], got {max_bad_fraction}.')


def _convert(entries: Iterable[_Entry | Skipped], max_side: int, repaired: list) -> Iterator:
  """Records (or Skipped) for `entries`; notes repaired captions in `repaired`."""
  for entry in entries:
    if isinstance(entry, Skipped):
      yield entry
      continue
    try:
      caption, was_repaired = ingest.clean_caption(entry.caption)
      image = ingest.load_image(entry.image, max_side)
    except ingest.BadRecord as e:
      yield Skipped(entry.id, e.reason)
      continue
    if was_repaired:
      repaired.append({'id': entry.id, 'reason': 'invalid UTF-8 in caption replaced'})
    yield {
      'id': entry.id,
      'group': entry.group,
      'image': image,
      'caption': caption,
      'labels': dict(entry.labels),
    }


def _real_source(
  entries: Iterable[_Entry | Skipped],
  split_of: Callable[[dict], str],
  *,
  input: str,  # pylint: disable=redefined-builtin
  limit: int,
  max_side: int,
  max_bad_fraction: float,
  **info,
) -> Source:
  repaired: list[dict] = []
  if limit:
    entries = itertools.islice(entries, limit)
  return Source(
    records=_convert(entries, max_side, repaired),
    split_of=split_of,
    info={'input': os.path.abspath(input), 'max_side': max_side, 'repaired': repaired, **info},
    max_bad_fraction=max_bad_fraction,
  )


def _hash_split(seed: int, val_fraction: float, test_fraction: float) -> Callable[[dict], str]:
  return lambda record: ingest.split_by_group(record['group'], seed, val_fraction, test_fraction)


def _text(value: Any) -> str:
  """A table cell as clean text ('' for a missing one)."""
  if value is None:
    return ''
  return ingest.repair_text(str(value))[0].strip()


def _read_table(path: str) -> tuple[list[str], list[dict | None]]:
  """The columns and rows of a .csv, .json (a list of objects) or .jsonl file.

  Undecodable bytes are kept as surrogate escapes (see ingest.clean_caption);
  a row that is not an object (a bad JSON line) is None.
  """
  ext = os.path.splitext(path)[1].lower()
  with open(path, encoding='utf-8-sig', errors='surrogateescape', newline='') as f:
    if ext == '.csv':
      reader = csv.DictReader(f)
      rows = list(reader)
      return list(reader.fieldnames or []), rows
    if ext == '.jsonl':
      rows = []
      for line in f:
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          row = None
        rows.append(row if isinstance(row, dict) else None)
    elif ext == '.json':
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise OptionError(f'{path!r} is not valid JSON: {e}') from e
      if not isinstance(data, list):
        raise OptionError(f'{path!r} must hold a JSON list of objects.')
      rows = [row if isinstance(row, dict) else None for row in data]
    else:
      raise OptionError(f'{path!r}: expected a .csv, .json or .jsonl file.')
  columns = list(dict.fromkeys(key for row in rows if row for key in row))
  return columns, rows


def _manifest(
  input: str | None = None,  # pylint: disable=redefined-builtin
  image_column: str = 'image',
  caption_column: str = 'caption',
  label_columns: str = '',
  group_column: str = '',
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> Source:
  """A CSV / JSON / JSONL table of image paths (relative to it) and captions."""
  _check_real_options(
    'manifest', input, False, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  columns, rows = _read_table(input)
  labels = [c.strip() for c in label_columns.split(',') if c.strip()]
  wanted = [image_column, caption_column, *labels, *([group_column] if group_column else [])]
  missing = [c for c in wanted if c not in columns]
  if missing:
    raise OptionError(
      f'{input!r} has no column {", ".join(map(repr, missing))}; its columns are '
      f'{", ".join(map(repr, columns))} (see --image_column, --caption_column, '
      '--label_columns, --group_column).'
    )
  base = os.path.dirname(os.path.abspath(input))

  def entries():
    for number, row in enumerate(rows, start=1):
      if row is None:
        yield Skipped(f'row {number}', 'bad JSON line')
        continue
      name = _text(row.get(image_column))
      if not name:
        yield Skipped(f'row {number}', 'no image path')
        continue
      group = _text(row.get(group_column)) if group_column else name
      yield _Entry(
        id=name,
        group=group or name,
        image=ingest.find_image(str(row[image_column]).strip(), [base]),
        caption=row.get(caption_column) or '',
        labels={c: _text(row.get(c)) for c in labels if _text(row.get(c))},
      )

  return _real_source(
    entries(),
    _hash_split(seed, val_fraction, test_fraction),
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
  )


def _normalized(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', name.lower())


# MedPix label -> its column (normalized: lower case, letters and digits only).
_MEDPIX_LABELS = {'modality': 'coremodality', 'body_part': 'location', 'plane': 'plane'}
_MEDPIX_CASE_COLUMNS = ('caseid', 'uid')


def _medpix(
  input: str | None = None,  # pylint: disable=redefined-builtin
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> Source:
  """A MedPix-style CSV / JSON export: filename, Caption, Core_Modality, ..."""
  _check_real_options(
    'medpix', input, False, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  columns, rows = _read_table(input)
  column = {_normalized(c): c for c in columns}
  for needed in ('filename', 'caption'):
    if needed not in column:
      raise OptionError(
        f'{input!r} has no {needed!r} column (MedPix exports have filename and Caption); '
        f'its columns are {", ".join(map(repr, columns))}.'
      )
  case_column = next((column[c] for c in _MEDPIX_CASE_COLUMNS if c in column), None)
  labels = {name: column[c] for name, c in _MEDPIX_LABELS.items() if c in column}
  base = os.path.dirname(os.path.abspath(input))
  directories = [base, os.path.join(base, 'images')]

  def entries():
    for number, row in enumerate(rows, start=1):
      if row is None:
        yield Skipped(f'row {number}', 'bad JSON line')
        continue
      name = _text(row.get(column['filename']))
      if not name:
        yield Skipped(f'row {number}', 'no image path')
        continue
      case = _text(row.get(case_column)) if case_column else ''
      yield _Entry(
        id=name,
        group=case or os.path.splitext(os.path.basename(name))[0],
        image=ingest.find_image(str(row[column['filename']]).strip(), directories),
        caption=row.get(column['caption']) or '',
        labels={k: _text(row.get(c)) for k, c in labels.items() if _text(row.get(c))},
      )

  return _real_source(
    entries(),
    _hash_split(seed, val_fraction, test_fraction),
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
  )


# ROCO's split folder -> our split, for ROCO (v1) and ROCOv2.
_ROCO_SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}
_ROCO2_SPLITS = {'train': 'train', 'valid': 'val', 'test': 'test'}


def _images_by_stem(directory: str) -> dict[str, str]:
  """Image paths in `directory` by file name without extension (ROCO ids)."""
  if not os.path.isdir(directory):
    return {}
  return {os.path.splitext(e.name)[0]: e.path for e in os.scandir(directory) if e.is_file()}


def _roco_entries(captions: str, split: str, images_dir: str) -> Iterator[_Entry | Skipped]:
  """The entries of ROCO (v1) captions.txt lines `ROCO_ID<TAB>caption`."""
  images = _images_by_stem(images_dir)
  with open(captions, encoding='utf-8', errors='surrogateescape') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if '\t' not in line:
        yield Skipped(f'{split} line {number}', 'malformed line')
        continue
      roco_id, caption = line.rstrip('\r\n').split('\t', 1)
      roco_id = _text(roco_id)
      path = images.get(roco_id, os.path.join(images_dir, roco_id + '.jpg'))
      yield _Entry(id=roco_id, group=roco_id, image=path, caption=caption, labels={})


def _roco2_entries(captions: str, split: str, images_dir: str) -> Iterator[_Entry | Skipped]:
  """The entries of a ROCOv2 {split}_captions.csv (columns ID, Caption)."""
  images = _images_by_stem(images_dir)
  columns, rows = _read_table(captions)
  if 'ID' not in columns or 'Caption' not in columns:
    raise OptionError(f'{captions!r} must have columns ID and Caption, has {columns}.')
  for number, row in enumerate(rows, start=2):
    roco_id = _text(row['ID'])
    if not roco_id:
      yield Skipped(f'{split} line {number}', 'malformed line')
      continue
    path = images.get(roco_id, os.path.join(images_dir, roco_id + '.jpg'))
    yield _Entry(id=roco_id, group=roco_id, image=path, caption=row['Caption'] or '', labels={})


def _roco(
  input: str | None = None,  # pylint: disable=redefined-builtin
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> Source:
  """ROCO ({train,validation,test}/radiology/) or ROCOv2, in its official splits."""
  _check_real_options('roco', input, True, 0.0, 0.0, limit, max_side, max_bad_fraction)
  parts = []
  for folder, split in _ROCO_SPLITS.items():
    radiology = os.path.join(input, folder, 'radiology')
    captions = os.path.join(radiology, 'captions.txt')
    if os.path.isfile(captions):
      parts.append((split, _roco_entries(captions, split, os.path.join(radiology, 'images'))))
  for folder, split in _ROCO2_SPLITS.items():
    captions = os.path.join(input, f'{folder}_captions.csv')
    if os.path.isfile(captions):
      parts.append((split, _roco2_entries(captions, split, os.path.join(input, folder))))
  if not parts:
    raise OptionError(
      f'--input={input!r} is not a ROCO directory: expected '
      '{train,validation,test}/radiology/captions.txt (ROCO) or '
      '{train,valid,test}_captions.csv (ROCOv2).'
    )
  split_of_id: dict[str, str] = {}

  def entries():
    for split, part in parts:
      for entry in part:
        if isinstance(entry, _Entry):
          # The first occurrence wins; prepare skips later ones as duplicates.
          split_of_id.setdefault(entry.id, split)
        yield entry

  return _real_source(
    entries(),
    lambda record: split_of_id[record['id']],
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
  )


# 'synthetic' first: error messages list the formats in this order.
FORMATS: dict[str, Callable[..., Source]] = {
  'synthetic': _synthetic,
  'manifest': _manifest,
  'medpix': _medpix,
  'roco': _roco,
}


def _check_bad_fraction(
  format: str,  # pylint: disable=redefined-builtin
  converted: int,
  skipped: list[dict],
  max_bad_fraction: float,
) -> None:
  """Raises TooManyBadRecords (or OptionError for no inputs at all)."""
  total = converted + len(skipped)
  if total == 0:
    raise OptionError(f'format {format!r} found no records in its input.')
  if len(skipped) / total <= max_bad_fraction:
    return
  by_reason = collections.defaultdict(list)
  for item in skipped:
    by_reason[item['reason']].append(item['id'])
  reasons = '; '.join(
    f'{reason}: {len(ids)} (e.g. {", ".join(map(repr, ids[:3]))})'
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
  )
  raise TooManyBadRecords(
    f'{len(skipped)} of {total} {format} inputs ({len(skipped) / total:.1%}) could not be '
    f'converted, more than --max_bad_fraction={max_bad_fraction}, so nothing was written. '
    f'Reasons: {reasons}. Fix the inputs (or the column flags), or raise --max_bad_fraction '
    'to keep only the good ones.'
  )


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
  unknown format or a bad option, and TooManyBadRecords (writing nothing)
  when more inputs are skipped than the format's max_bad_fraction allows.
  A record whose id was seen before is skipped as a 'duplicate id'.
  """
  if format not in FORMATS:
    raise OptionError(f'unknown format {format!r}; known formats: {", ".join(FORMATS)}')
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
  seen_ids: set[str] = set()
  try:
    for item in source.records:
      if isinstance(item, Skipped):
        skipped.append({'id': item.id, 'reason': item.reason})
        continue
      if item['id'] in seen_ids:
        skipped.append({'id': item['id'], 'reason': 'duplicate id'})
        continue
      seen_ids.add(item['id'])
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
    if source.max_bad_fraction is not None:
      _check_bad_fraction(format, len(seen_ids), skipped, source.max_bad_fraction)
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
flags.DEFINE_string('format', None, f'Dataset format, one of: {", ".join(FORMATS)}.')
flags.DEFINE_string('output', None, 'Directory to write the dataset to.')
flags.DEFINE_integer('seed', 0, 'Random seed (synthetic: the data; others: the split).')
flags.DEFINE_integer('num_train', 8000, 'synthetic: training examples.')
flags.DEFINE_integer('num_val', 500, 'synthetic: validation examples.')
flags.DEFINE_integer('num_test', 1000, 'synthetic: test examples.')
flags.DEFINE_integer('image_size', 64, 'Image side in pixels.')
flags.DEFINE_integer('num_shards', 4, 'ArrayRecord shards per split (fewer for a small split).')
flags.DEFINE_string('input', None, 'manifest, medpix: the table file; roco: the dataset directory.')
flags.DEFINE_integer('limit', 0, 'Real formats: read at most this many inputs (0 = all).')
flags.DEFINE_integer('max_side', ingest.DEFAULT_MAX_SIDE, 'Real formats: longest image side.')
flags.DEFINE_float('val_fraction', 0.05, 'manifest, medpix: share of groups in val.')
flags.DEFINE_float('test_fraction', 0.1, 'manifest, medpix: share of groups in test.')
flags.DEFINE_float(
  'max_bad_fraction', 0.05, 'Real formats: fail if more than this share of inputs is bad.'
)
flags.DEFINE_string('image_column', 'image', 'manifest: the image path column.')
flags.DEFINE_string('caption_column', 'caption', 'manifest: the caption column.')
flags.DEFINE_string('label_columns', '', 'manifest: comma-separated columns kept as labels.')
flags.DEFINE_string(
  'group_column', '', 'manifest: the case / patient column (default: each image its own group).'
)
flags.mark_flags_as_required(['format', 'output'])


def _options_from_flags(builder: Callable[..., Source]) -> dict:
  """The flag values named by the builder's keyword arguments."""
  names = inspect.signature(builder).parameters
  return {name: FLAGS[name].value for name in names if name in FLAGS}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.format not in FORMATS:
    sys.exit(f'prepare: unknown --format={FLAGS.format!r}; known formats: {", ".join(FORMATS)}')
  start = time.time()
  try:
    info = prepare(
      FLAGS.format,
      FLAGS.output,
      num_shards=FLAGS.num_shards,
      **_options_from_flags(FORMATS[FLAGS.format]),
    )
  except (OptionError, errors.UserError) as e:
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
