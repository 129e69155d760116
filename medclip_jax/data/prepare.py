r"""Converts a dataset into medclip_jax records (ArrayRecord shards + info).

    python -m medclip_jax.data.prepare --format=synthetic --output=DIR \
        [--seed=0] [--num_train=8000 --num_val=500 --num_test=1000] \
        [--image_size=64] [--num_shards=4]
    python -m medclip_jax.data.prepare --format=manifest --input=FILE.csv \
        --output=DIR [--image_column=image --caption_column=caption] \
        [--label_columns=a,b] [--group_column=patient]
    python -m medclip_jax.data.prepare --format=medpix --input=EXPORT.csv ...
    python -m medclip_jax.data.prepare --format=roco --input=ROCO_DIR ...
    python -m medclip_jax.data.prepare --format=pubmedvision \
        --input=PubMedVision_Alignment_VQA.json [--sample=4096] ...
    python -m medclip_jax.data.prepare --format=reports --input=REPORTS_DIR \
        [--images=IMAGES_DIR] [--sections=impression,findings] ...
    python -m medclip_jax.data.prepare --format=dicom --input=DICOM_DIR \
        [--captions=captions.csv] ...

writes DIR/{train,val,test}.array_record-*-of-* and DIR/dataset_info.json
(see medclip_jax.data.records). Each format's module in
medclip_jax.data.formats documents what it reads and its rules. Real formats
(all but 'synthetic') also take [--max_side=512] [--limit=0] [--seed=0]
[--val_fraction=0.05 --test_fraction=0.1] [--max_bad_fraction=0.05]: inputs
that cannot be read are skipped and listed in dataset_info.json, but if more
than max_bad_fraction of them fail, nothing is written. ROCO keeps its
official splits; the others split by case or patient.

Adding a format: see medclip_jax.data.formats. The CLI passes each format's
builder exactly the flags its signature names.
"""

from __future__ import annotations

import collections
import inspect
import os
import time
from collections.abc import Callable, Sequence

from absl import app
from absl import flags

from medclip_jax import cli
from medclip_jax import errors
from medclip_jax.data import ingest
from medclip_jax.data import records
from medclip_jax.data.formats import FORMATS
from medclip_jax.data.formats.base import OptionError
from medclip_jax.data.formats.base import Skipped
from medclip_jax.data.formats.base import Source


class TooManyBadRecords(errors.UserError):
  """More inputs failed than the format's max_bad_fraction allows."""


def _check_bad_fraction(
  format: str,  # pylint: disable=redefined-builtin
  converted: int,
  skipped: list[dict],
  max_bad_fraction: float,
  input: str = '',  # pylint: disable=redefined-builtin
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
  where = ''
  if 'missing file' in by_reason and os.path.isfile(input):
    where = (
      f' Image paths in a table are read relative to its folder, {os.path.dirname(input)} '
      '(or absolute).'
    )
  raise TooManyBadRecords(
    f'{len(skipped)} of {total} {format} inputs ({len(skipped) / total:.1%}) could not be '
    f'converted, more than --max_bad_fraction={max_bad_fraction}, so nothing was written. '
    f'Reasons: {reasons}.{where} Fix the inputs (or the column flags), or raise '
    '--max_bad_fraction to keep only the good ones.'
  )


def prepare(
  format: str,
  output: str,
  *,
  num_shards: int = 4,  # pylint: disable=redefined-builtin
  progress: Callable[[int, int], None] | None = None,
  **options,
) -> dict:
  """Converts dataset `format` into `output`; returns the dataset info.

  `options` are the format builder's keyword arguments (for 'synthetic':
  seed, num_train, num_val, num_test, image_size). `progress`, if given, is
  called with the (converted, skipped) counts so far as inputs are read, and
  with the final counts at the end. Raises OptionError for an
  unknown format or a bad option, and TooManyBadRecords (writing nothing)
  when more inputs are skipped than the format's max_bad_fraction allows.
  A record whose id was seen before is skipped as a 'duplicate id'.
  """
  if format not in FORMATS:
    raise OptionError(f'unknown format {format!r}; known formats: {", ".join(FORMATS)}')
  if num_shards < 1:
    raise OptionError(f'num_shards must be >= 1, got {num_shards}.')
  if os.path.exists(output) and not os.path.isdir(output):
    raise OptionError(
      f'--output={output!r} is a file; give the directory to write the dataset to (a new '
      'one, or one written by an earlier prepare).'
    )
  builder = FORMATS[format]
  try:
    inspect.signature(builder).bind(**options)
  except TypeError as e:
    raise OptionError(f'format {format!r}: {e}') from e
  source = builder(**options)
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise OptionError(f'--output={output!r} cannot be created: {e.strerror}.') from e
  if not os.access(output, os.W_OK | os.X_OK):
    raise OptionError(f'--output={output!r} is not a directory you can write to.')

  writers = {split: records.SplitWriter(output, split, num_shards) for split in records.SPLITS}
  skipped: list[dict] = []
  labels = {name: set(values) for name, values in source.labels.items()}
  label_counts = {split: collections.defaultdict(collections.Counter) for split in records.SPLITS}
  caption_words: list[int] = []
  captions_in = collections.Counter()  # split -> captions (an image may have several)
  split_of_group: dict[str, str] = {}
  seen_ids: set[str] = set()
  left_out = collections.Counter()  # unpaired records the split rule put outside train
  try:
    for item in source.records:
      if progress:
        progress(len(seen_ids), len(skipped))
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
      kind = item.get('kind')
      if kind:
        # Unpaired data is for training only: evaluation needs pairs. Left out, not bad.
        if split != 'train':
          left_out[kind] += 1
          continue
        split = records.unpaired_split(split, kind)
        if split not in writers:
          writers[split] = records.SplitWriter(output, split, num_shards)
          label_counts[split] = collections.defaultdict(collections.Counter)
      writers[split].write(item)
      for name, value in item['labels'].items():
        labels.setdefault(name, set()).add(value)
        label_counts[split][name][value] += 1
      several = [c for c in records.captions(item) if c]
      captions_in[split] += len(several)
      caption_words.extend(len(c.split()) for c in several)
    if progress:
      progress(len(seen_ids), len(skipped))
    if source.max_bad_fraction is not None:
      _check_bad_fraction(
        format, len(seen_ids), skipped, source.max_bad_fraction, source.info.get('input', '')
      )
    info = {
      'format': format,
      'skipped': skipped,
      **({'unpaired_outside_train': dict(left_out)} if left_out else {}),
      'labels': {name: sorted(values) for name, values in labels.items()},
      # Records per class and split: class balance, and how many records lack a label.
      'label_counts': {
        split: {name: dict(sorted(counts.items())) for name, counts in sorted(by_name.items())}
        for split, by_name in label_counts.items()
      },
      'caption_length': {
        'min': min(caption_words, default=0),
        'mean': round(sum(caption_words) / max(1, len(caption_words)), 2),
        'max': max(caption_words, default=0),
      },
      **source.info,
    }
    # Before any shard is committed: an info that cannot be written leaves `output` as it was.
    records.dataset_info_text(info)
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise

  # Unpaired splits an earlier conversion into this directory wrote, and this one did not.
  for kind in records.UNPAIRED_KINDS:
    split = records.unpaired_split('train', kind)
    if split not in writers:
      records.remove_split(output, split)
  splits = {}
  for split, writer in writers.items():
    paths = writer.close()
    splits[split] = {
      'count': writer.count,
      'captions': captions_in[split],
      'files': [os.path.basename(p) for p in paths],
    }
  info.update(splits=splits, converted=sum(s['count'] for s in splits.values()))
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
flags.DEFINE_string(
  'input',
  None,
  'manifest, medpix, pubmedvision: the table / JSON file; roco, reports, dicom: the directory.',
)
flags.DEFINE_integer('limit', 0, 'Real formats: read at most this many inputs (0 = all).')
flags.DEFINE_integer('max_side', ingest.DEFAULT_MAX_SIDE, 'Real formats: longest image side.')
flags.DEFINE_float('val_fraction', 0.05, 'Real formats but roco: share of groups in val.')
flags.DEFINE_float('test_fraction', 0.1, 'Real formats but roco: share of groups in test.')
flags.DEFINE_float(
  'max_bad_fraction', 0.05, 'Real formats: fail if more than this share of inputs is bad.'
)
flags.DEFINE_string('image_column', 'image', 'manifest: the image path column.')
flags.DEFINE_string('caption_column', 'caption', 'manifest: the caption column.')
flags.DEFINE_string('label_columns', '', 'manifest: comma-separated columns kept as labels.')
flags.DEFINE_string(
  'group_column', '', 'manifest: the case / patient column (default: each image its own group).'
)
flags.DEFINE_integer(
  'sample', 0, 'pubmedvision: keep a deterministic (seeded) sample of this many records (0 = all).'
)
flags.DEFINE_string('images', '', 'reports: the image tree (default: --input).')
flags.DEFINE_string(
  'sections', 'impression,findings', 'reports: the report sections to caption with, by preference.'
)
flags.DEFINE_string('captions', '', 'dicom: a CSV of file,caption (default: captions from tags).')
flags.DEFINE_bool(
  'unpaired',
  False,
  'manifest: keep rows with an image but no caption (image-only records) and with a caption '
  'but no image (text-only), written as train_image_only / train_text_only for '
  'config.data.unpaired; by default both are skipped.',
)
flags.DEFINE_integer('unpaired_images', 0, 'synthetic: extra training images without a caption.')
flags.DEFINE_integer('unpaired_texts', 0, 'synthetic: extra training captions without an image.')
flags.mark_flags_as_required(['format', 'output'])


def _options_from_flags(builder: Callable[..., Source]) -> dict:
  """The flag values named by the builder's keyword arguments."""
  names = inspect.signature(builder).parameters
  return {name: FLAGS[name].value for name in names if name in FLAGS}


def _progress_printer(interval: float = 10.0) -> Callable[[int, int], None]:
  """A `progress` callback printing a line at most every `interval` seconds."""
  start = last = time.monotonic()

  def report(converted: int, skipped: int) -> None:
    nonlocal last
    now = time.monotonic()
    if now - last >= interval:
      last = now
      rate = (converted + skipped) / (now - start)
      print(f'... {converted} converted, {skipped} skipped, {rate:.0f} inputs/s', flush=True)

  return report


def _refuse_foreign_flags(format: str) -> None:  # pylint: disable=redefined-builtin
  """A format flag given for a format that does not read it is an error, not ignored."""
  format_flags = {
    name for builder in FORMATS.values() for name in inspect.signature(builder).parameters
  } & set(FLAGS)
  takes = set(inspect.signature(FORMATS[format]).parameters) & format_flags
  foreign = sorted(name for name in format_flags - takes if FLAGS[name].present)
  if foreign:
    raise errors.UserError(
      f'--format={format} does not read {", ".join("--" + n for n in foreign)}, so '
      f'{"it" if len(foreign) == 1 else "they"} would be ignored. This format takes '
      f'{", ".join("--" + n for n in sorted(takes))} (and --output, --num_shards); '
      'see python -m medclip_jax.data.prepare --help.'
    )


def skip_summary(skipped: list[dict], top: int = 3) -> str:
  """'5 skipped (3 unreadable image, 2 duplicate id)': the commonest reasons with counts."""
  if not skipped:
    return '0 skipped'
  counts = collections.Counter(item['reason'] for item in skipped).most_common()
  shown = ', '.join(f'{n} {reason}' for reason, n in counts[:top])
  more = f', {sum(n for _, n in counts[top:])} other' if len(counts) > top else ''
  return f'{len(skipped)} skipped ({shown}{more}; all listed in dataset_info.json)'


def repair_summary(repaired: list[dict]) -> str:
  """'' if no caption was repaired, else how many, and the likely cause and fix."""
  if not repaired:
    return ''
  return (
    f'; invalid UTF-8 replaced (by U+FFFD) in the captions of {len(repaired)} '
    f"record{'' if len(repaired) == 1 else 's'} (listed in dataset_info.json as 'repaired'): "
    'the input is probably not UTF-8 (e.g. a CSV saved by Excel as cp1252), so re-save it as '
    'UTF-8 and prepare again'
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.format not in FORMATS:
    raise errors.UserError(
      f'prepare: unknown --format={FLAGS.format!r}; known formats: {", ".join(FORMATS)}.'
    )
  _refuse_foreign_flags(FLAGS.format)
  start = time.time()
  try:
    info = prepare(
      FLAGS.format,
      FLAGS.output,
      num_shards=FLAGS.num_shards,
      progress=_progress_printer(),
      **_options_from_flags(FORMATS[FLAGS.format]),
    )
  except OptionError as e:
    raise errors.UserError(f'prepare: {e}') from e
  seconds = time.time() - start

  def count(s):
    several = f', {s["captions"]} captions' if s['captions'] != s['count'] else ''
    return f'{s["count"]}{several} ({len(s["files"])} shard{"" if len(s["files"]) == 1 else "s"})'

  counts = ', '.join(f'{split} {count(s)}' for split, s in info['splits'].items())
  outside = sum(info.get('unpaired_outside_train', {}).values())
  left_out = f'; {outside} unpaired records of val/test left out' if outside else ''
  print(
    f'Wrote {info["format"]} dataset to {FLAGS.output}: {counts}; '
    f'{skip_summary(info["skipped"])}{left_out}{repair_summary(info.get("repaired", []))}; '
    f'{seconds:.1f} s.'
  )
  for warning in info.get('warnings', []):
    print(f'warning: {warning}')


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  cli.run(main)


if __name__ == '__main__':
  console_main()
