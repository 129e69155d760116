"""The record format shared by every dataset format and the input pipeline.

A prepared dataset is a directory holding, per split ('train', 'val', 'test'),
ArrayRecord shards named ``{split}.array_record-{i:05d}-of-{n:05d}`` plus a
``dataset_info.json`` describing it (see `write_dataset_info`).

Each ArrayRecord entry is one msgpack-serialised record::

    {'id': str,            # unique across the whole dataset
     'group': str,         # case / patient id; no group spans two splits
     'image': bytes,       # PNG, grayscale ('L') or RGB
     'caption': str,       # the text paired with the image
     'labels': {str: str}, # classification labels; may be empty
     'captions': [str],    # only for an image with several captions: all of
                           # them, the first being 'caption' (see `captions`)
     'kind': str}          # only for unpaired data (prepare's unpaired options):
                           # 'image_only' (caption '') or 'text_only' (image b'')

Unpaired records of the training split are written as their own splits,
``train_image_only`` and ``train_text_only`` (`unpaired_split`), which the
pipeline mixes into training at the shares `config.data.unpaired` gives.

Shards are written with ``group_size:1`` so that grain can read any record
directly (random access) without decoding its neighbours.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack

SPLITS = ('train', 'val', 'test')
DATASET_INFO = 'dataset_info.json'
WRITER_OPTIONS = 'group_size:1'
PREPARE_COMMAND = 'python -m medclip_jax.data.prepare --format=synthetic --output={dir}'

_FIELD_TYPES = {
  'id': str,
  'group': str,
  'image': bytes,
  'caption': str,
  'labels': dict,
}
_OPTIONAL_FIELD_TYPES = {'captions': list, 'kind': str}
# What an unpaired record lacks.
UNPAIRED_KINDS = {'image_only': 'caption', 'text_only': 'image'}


def unpaired_split(split: str, kind: str) -> str:
  """The split an unpaired record of `split` is written to: e.g. 'train_image_only'."""
  return f'{split}_{kind}'


def captions(record: dict) -> list[str]:
  """Every caption of `record`: one, or several for an image described more than once."""
  return list(record.get('captions') or [record['caption']])


def _check(record: Any) -> None:
  """Raises ValueError unless `record` has exactly the record keys and types."""
  if not isinstance(record, dict):
    raise ValueError(f'A record must be a dict, got {type(record).__name__}.')
  missing = sorted(set(_FIELD_TYPES) - set(record))
  unknown = sorted(str(k) for k in set(record) - set(_FIELD_TYPES) - set(_OPTIONAL_FIELD_TYPES))
  if missing or unknown:
    raise ValueError(
      f'Bad record keys: missing {missing}, unknown {unknown}; a record '
      f'has exactly the keys {sorted(_FIELD_TYPES)}, and optionally {sorted(_OPTIONAL_FIELD_TYPES)}.'
    )
  if 'captions' in record:
    several = record['captions']
    if (
      not isinstance(several, list)
      or len(several) < 2
      or not all(isinstance(c, str) and c for c in several)
      or several[0] != record.get('caption')
    ):
      raise ValueError(
        f'Record {record.get("id")!r}: captions must be a list of two or more non-empty '
        "strings starting with the record's caption."
      )
  for key, kind in _FIELD_TYPES.items():
    if not isinstance(record[key], kind):
      raise ValueError(
        f'Record {record.get("id")!r}: field {key!r} must be '
        f'{kind.__name__}, got {type(record[key]).__name__}.'
      )
  for name, value in record['labels'].items():
    if not isinstance(name, str) or not isinstance(value, str):
      raise ValueError(
        f'Record {record["id"]!r}: labels must map str to str, got {name!r}: {value!r}.'
      )
  if not record['id']:
    raise ValueError('Record id must be a non-empty string.')
  kind = record.get('kind')
  if kind is not None and kind not in UNPAIRED_KINDS:
    raise ValueError(
      f'Record {record["id"]!r}: kind must be one of {sorted(UNPAIRED_KINDS)}, got {kind!r}.'
    )
  lacks = UNPAIRED_KINDS.get(kind)
  if lacks != 'image' and not record['image']:
    raise ValueError(f'Record {record["id"]!r} has an empty image.')
  if lacks and record[lacks]:
    raise ValueError(f'Record {record["id"]!r} is {kind} but has a {lacks}.')


def encode(record: dict) -> bytes:
  """Validates `record` and serialises it with msgpack, deterministically."""
  _check(record)
  canonical = {
    'id': record['id'],
    'group': record['group'],
    'image': record['image'],
    'caption': record['caption'],
    'labels': dict(sorted(record['labels'].items())),
  }
  if 'captions' in record:
    canonical['captions'] = list(record['captions'])
  if 'kind' in record:
    canonical['kind'] = record['kind']
  return msgpack.packb(canonical, use_bin_type=True)


def decode(raw: bytes) -> dict:
  """Parses one serialised record; raises ValueError if it is not a record."""
  try:
    record = msgpack.unpackb(raw, raw=False)
  except Exception as e:  # msgpack raises several unrelated exception types.
    raise ValueError(f'Not a msgpack-encoded record: {e}') from e
  _check(record)
  return record


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}.array_record-{index:05d}-of-{num_shards:05d}'


def _split_pattern(data_dir: str, split: str) -> str:
  return os.path.join(glob.escape(data_dir), f'{split}.array_record-*-of-*')


def remove_split(data_dir: str, split: str) -> None:
  """Deletes the shards of `split` in `data_dir`, if any."""
  for path in glob.glob(_split_pattern(data_dir, split)):
    os.remove(path)


class SplitWriter:
  """Streams the records of one split into ArrayRecord shards.

  Records are dealt round-robin over the shards. There are `num_shards`
  shards, fewer for a small split so that each holds at least
  `min_per_shard` records, and always at least one (an empty split gives one
  empty shard, so readers find the split). To decide that, the first
  `num_shards * min_per_shard` encoded records are held in memory. Shards
  are written under temporary names and renamed by `close()`, which also
  removes this split's shards left in the directory by an earlier run.
  """

  def __init__(self, output_dir: str, split: str, num_shards: int, min_per_shard: int = 64):
    if num_shards < 1:
      raise ValueError(f'num_shards must be >= 1, got {num_shards}.')
    if not split or '/' in split or os.sep in split:
      raise ValueError(f'Bad split name {split!r}.')
    self.output_dir = output_dir
    self.split = split
    self.count = 0
    self._max_shards = num_shards
    self._min_per_shard = max(1, min_per_shard)
    self._pending: list[bytes] | None = []
    self._writers: list[Any] = []
    self._tmp_paths: list[str] = []
    os.makedirs(output_dir, exist_ok=True)

  def _open(self, num_shards: int) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    for i in range(num_shards):
      path = os.path.join(self.output_dir, f'.{self.split}.{i:05d}.{os.getpid()}.tmp-array_record')
      self._tmp_paths.append(path)
      self._writers.append(ArrayRecordWriter(path, WRITER_OPTIONS))
    pending, self._pending = self._pending, None
    for i, raw in enumerate(pending):
      self._writers[i % num_shards].write(raw)

  def write(self, record: dict) -> None:
    raw = encode(record)
    if self._pending is None:
      self._writers[self.count % len(self._writers)].write(raw)
    else:
      self._pending.append(raw)
      if len(self._pending) >= self._max_shards * self._min_per_shard:
        self._open(self._max_shards)
    self.count += 1

  def close(self) -> list[str]:
    """Finishes the shards; returns their final paths in shard order."""
    if self._pending is not None:
      wanted = -(-len(self._pending) // self._min_per_shard)  # ceil
      self._open(min(self._max_shards, max(1, wanted)))
    for writer in self._writers:
      writer.close()
    remove_split(self.output_dir, self.split)
    paths = []
    for i, tmp in enumerate(self._tmp_paths):
      path = os.path.join(self.output_dir, shard_name(self.split, i, len(self._tmp_paths)))
      os.replace(tmp, path)
      paths.append(path)
    self._writers, self._tmp_paths = [], []
    return paths

  def abort(self) -> None:
    """Closes and deletes the temporary shards (after an error)."""
    for writer in self._writers:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except
        pass
    for tmp in self._tmp_paths:
      if os.path.exists(tmp):
        os.remove(tmp)
    self._writers, self._tmp_paths, self._pending = [], [], None


def write_split(
  records: Iterable[dict], output_dir: str, split: str, num_shards: int
) -> tuple[list[str], int]:
  """Writes `records` as the shards of `split`; returns (paths, count)."""
  writer = SplitWriter(output_dir, split, num_shards)
  try:
    for record in records:
      writer.write(record)
  except BaseException:
    writer.abort()
    raise
  return writer.close(), writer.count


def _missing_message(data_dir: str, what: str) -> str:
  return (
    f'No {what} in {data_dir!r}. Prepare a dataset there first, '
    f'e.g.: {PREPARE_COMMAND.format(dir=data_dir)}'
  )


def split_files(data_dir: str, split: str) -> list[str]:
  """The sorted ArrayRecord shard paths of `split` in `data_dir`."""
  paths = sorted(glob.glob(_split_pattern(data_dir, split)))
  if not paths:
    raise FileNotFoundError(_missing_message(data_dir, f'{split!r} ArrayRecord files'))
  return paths


def read_records(paths: Sequence[str], chunk: int = 256) -> Iterator[dict]:
  """Yields the decoded records of the given shards, shard after shard.

  A sequential reader for tools and tests; training reads the shards with
  grain's ArrayRecordDataSource and `decode`.
  """
  from array_record.python.array_record_module import ArrayRecordReader

  for path in paths:
    reader = ArrayRecordReader(path)
    try:
      total = reader.num_records()
      for start in range(0, total, chunk):
        for raw in reader.read(start, min(total, start + chunk)):
          yield decode(raw)
    finally:
      reader.close()


def write_dataset_info(output_dir: str, info: dict) -> str:
  """Writes `info` to DIR/dataset_info.json; returns the path.

  Keys written by medclip_jax.data.prepare: 'format', 'splits' ({split:
  {'count', 'files' (basenames)}}), 'converted', 'skipped' ([{'id',
  'reason'}]), 'labels' ({name: sorted classes}), 'label_counts' ({split:
  {name: {class: records}}}), 'caption_length' ({'min', 'mean', 'max'} in
  words), 'warnings' (what prepare printed about inputs it read but could not use
  fully), and what the format adds (e.g. 'image_size', 'seed'). The
  formatting is stable (sorted keys) so equal infos give equal files.
  """
  text = dataset_info_text(info)
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, DATASET_INFO)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def dataset_info_text(info: dict) -> bytes:
  """dataset_info.json's bytes for `info`; raises UnicodeEncodeError for a string that holds
  undecodable bytes (surrogate escapes), which prepare cleans first."""
  return (json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + '\n').encode('utf-8')


def splits_with_records(info: dict) -> str:
  """'test, train, val': the splits of a dataset info that hold records ('none' if none), for
  messages that name the splits a user can give."""
  return ', '.join(sorted(s for s, v in info.get('splits', {}).items() if v.get('count'))) or 'none'


def read_dataset_info(data_dir: str) -> dict:
  """Reads DIR/dataset_info.json."""
  path = os.path.join(data_dir, DATASET_INFO)
  if not os.path.exists(path):
    raise FileNotFoundError(_missing_message(data_dir, DATASET_INFO))
  with open(path, encoding='utf-8') as f:
    return json.load(f)
