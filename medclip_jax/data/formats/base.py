"""What every dataset format shares: the `Source` a builder returns, `Skipped`
inputs, option checks, and the conversion of a real format's `Entry`s into
records (robust image and caption reading from medclip_jax.data.ingest).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from medclip_jax.data import ingest


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


# Real formats read their inputs into `Entry`s, which `real_source` converts
# (skipping bad ones), splits and limits the same way.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One input of a real format, before its image and caption are checked."""

  id: str
  group: str
  # A path, or for inputs that are not image files (DICOM) a function of
  # max_side returning the bytes to store (PNG, or a JPEG's own, as
  # ingest.load_image), raising ingest.BadRecord on failure; None for a text
  # without an image (kept as a text-only record when unpaired data is asked for).
  image: str | Callable[[int], bytes] | None
  # The caption as read: text or bytes, or a table cell's list of captions, number, or None
  # or NaN (blank).
  caption: Any
  labels: Mapping[str, str]
  # Other captions of the same image (e.g. several reports or reference captions).
  more_captions: tuple = ()


def check_real_options(
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


def convert(
  entries: Iterable[Entry | Skipped],
  max_side: int,
  repaired: list,
  stored_as: dict,
  unpaired: bool = False,
) -> Iterator:
  """Records (or Skipped) for `entries`; notes repaired captions in `repaired` and counts
  the images stored as their own JPEG and as PNG in `stored_as` ({'jpeg': n, 'png': m}).

  With `unpaired`, an image without a caption becomes an image-only record and a caption
  without an image (`Entry.image` None) a text-only one (records' 'kind'); otherwise they
  are skipped. A corrupt image is skipped either way."""
  for entry in entries:
    if isinstance(entry, Skipped):
      yield entry
      continue
    kind = None
    try:
      try:
        captions, was_repaired = _clean_captions((entry.caption, *entry.more_captions))
      except ingest.BadRecord as e:
        if not (unpaired and entry.image is not None and e.reason == 'empty caption'):
          raise
        kind, captions, was_repaired = 'image_only', [''], False
      if entry.image is None:
        if not unpaired:
          raise ingest.BadRecord('no image')
        kind, image = 'text_only', b''
      elif callable(entry.image):
        image = entry.image(max_side)
      else:
        image = ingest.load_image(entry.image, max_side)
    except ingest.BadRecord as e:
      yield Skipped(entry.id, e.reason)
      continue
    if image:
      stored_as['jpeg' if ingest.is_jpeg(image) else 'png'] += 1
    if was_repaired:
      repaired.append({'id': entry.id, 'reason': 'invalid UTF-8 in caption replaced'})
    record = {
      'id': entry.id,
      'group': entry.group,
      'image': image,
      'caption': captions[0],
      'labels': dict(entry.labels),
    }
    if len(captions) > 1:
      record['captions'] = captions
    if kind:
      record['kind'] = kind
    yield record


def _caption_texts(cell: Any) -> Iterator[str | bytes]:
  """The captions of a caption cell: its items for a list (as in many Hugging Face caption
  sets), a number as its text, nothing for None or NaN (pandas' blank cell).

  Raises `ingest.BadRecord` for any other value (e.g. a JSON object)."""
  if isinstance(cell, (str, bytes)):
    yield cell
  elif isinstance(cell, (list, tuple, np.ndarray)):
    for item in cell:
      yield from _caption_texts(item)
  elif isinstance(cell, numbers.Real) and not isinstance(cell, bool):
    if not math.isnan(cell):
      yield str(cell)
  elif cell is not None:
    raise ingest.BadRecord(f'caption is a {type(cell).__name__}, not text')


def _clean_captions(raw_captions) -> tuple[list[str], bool]:
  """The non-empty captions of caption cells (see `_caption_texts`), cleaned and without
  repeats, and whether bad bytes were replaced; `ingest.BadRecord('empty caption')` if none
  is left."""
  captions, repaired = [], False
  for raw in itertools.chain.from_iterable(map(_caption_texts, raw_captions)):
    try:
      caption, was_repaired = ingest.clean_caption(raw)
    except ingest.BadRecord:
      continue  # a blank one among several
    repaired |= was_repaired
    if caption not in captions:
      captions.append(caption)
  if not captions:
    raise ingest.BadRecord('empty caption')
  return captions, repaired


def real_source(
  entries: Iterable[Entry | Skipped],
  split_of: Callable[[dict], str],
  *,
  input: str,  # pylint: disable=redefined-builtin
  limit: int,
  max_side: int,
  max_bad_fraction: float,
  unpaired: bool = False,
  **info,
) -> Source:
  repaired: list[dict] = []
  # Filled while the records are read: images kept as the input's JPEG bytes, and re-encoded.
  stored_as = {'jpeg': 0, 'png': 0}
  if limit:
    entries = itertools.islice(entries, limit)
  return Source(
    records=convert(entries, max_side, repaired, stored_as, unpaired),
    split_of=split_of,
    info={
      'input': path_text(input),
      'max_side': max_side,
      'repaired': repaired,
      'images_stored_as': stored_as,
      **({'unpaired': True} if unpaired else {}),
      **info,
    },
    max_bad_fraction=max_bad_fraction,
  )


def grouped_source(
  entries: Iterable[Entry | Skipped],
  *,
  seed: int,
  val_fraction: float,
  test_fraction: float,
  **options,
) -> Source:
  """`real_source` split by a hash of each record's group (case, patient).

  The seed and fractions are recorded in dataset_info.json with `options`'
  extra fields.
  """
  return real_source(
    entries,
    lambda record: ingest.split_by_group(record['group'], seed, val_fraction, test_fraction),
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    **options,
  )


def path_text(path: str) -> str:
  """`path`, absolute, as dataset_info.json records it (undecodable bytes replaced)."""
  return ingest.repair_text(os.path.abspath(path))[0]


def text(value: Any) -> str:
  """A table cell as clean text ('' for a missing one: None, or pandas' NaN; a whole float
  without its '.0', as pandas stores an integer column with blanks)."""
  if isinstance(value, float):
    if math.isnan(value):
      return ''
    if value.is_integer():
      value = int(value)
  if value is None:
    return ''
  return ingest.repair_text(str(value))[0].strip()


_CHUNK = 1 << 20  # characters read at a time by iter_json
_NOT_NUMBER = re.compile(r'[^0-9.eE+-]')


def _json_list_items(f, path: str) -> Iterator[Any]:
  """The items of the JSON list in file `f`, parsed one at a time."""
  decoder = json.JSONDecoder()
  buf, pos, eof = '', 0, False

  def fill() -> None:
    nonlocal buf, pos, eof
    more = f.read(_CHUNK)
    eof = not more
    buf, pos = buf[pos:] + more, 0

  def skip_space() -> str:
    """The next non-space character ('' at the end), not consumed."""
    nonlocal pos
    while True:
      while pos < len(buf) and buf[pos].isspace():
        pos += 1
      if pos < len(buf) or eof:
        return buf[pos : pos + 1]
      fill()

  fill()
  if skip_space() != '[':
    raise OptionError(f'{path!r} must hold a JSON list of objects.')
  pos += 1
  if skip_space() == ']':
    return
  count = 0  # items parsed
  while True:
    skip_space()  # raw_decode does not skip leading space
    try:
      item, end = decoder.raw_decode(buf, pos)
    except json.JSONDecodeError as e:
      if eof:
        raise OptionError(f'{path!r} is not valid JSON: {e.msg} in item {count + 1}.') from e
      fill()  # the item runs past the buffer
      continue
    if isinstance(item, (int, float)) and not eof and not _NOT_NUMBER.search(buf, end, end + 64):
      fill()  # the number may go on in the next chunk: parse it again
      continue
    pos, count = end, count + 1
    yield item
    following = skip_space()
    if following == ']':
      return
    if following != ',':
      raise OptionError(
        f'{path!r} is not valid JSON: expected , or ] after item {count}, got {following!r}.'
      )
    pos += 1


def iter_json(path: str) -> Iterator[dict | None]:
  """The objects of a .json list or a .jsonl file, read one at a time.

  For files too large to load whole (PubMedVision's JSON is over a gigabyte).
  An item or line that is not an object (or not JSON, in .jsonl) is None;
  undecodable bytes are kept as surrogate escapes. Raises OptionError for a
  .json file that is not a valid list.
  """
  jsonl = os.path.splitext(path)[1].lower() == '.jsonl'
  with open(path, encoding='utf-8-sig', errors='surrogateescape') as f:
    if not jsonl:
      for item in _json_list_items(f, path):
        yield item if isinstance(item, dict) else None
      return
    for line in f:
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError:
        item = None
      yield item if isinstance(item, dict) else None


def _read_parquet(path: str) -> tuple[list[str], list[dict]]:
  # Imported here: only Parquet tables need pyarrow, and it is slow to import.
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  try:
    table = pyarrow.parquet.read_table(path)
  except (pyarrow.ArrowException, OSError) as e:
    raise OptionError(f'{path!r} is not a readable Parquet file: {e}') from e
  return table.column_names, table.to_pylist()


@dataclasses.dataclass(frozen=True)
class BadRow:
  """A table row that cannot be read; formats skip it with this reason."""

  reason: str


def _csv_row(row: dict) -> dict | BadRow:
  # Cells out of line with the header: an unquoted comma shifts the labels, and a quote
  # left open swallows the rows after it into one cell.
  off = ingest.misaligned(row)
  return (
    BadRow(f'{off} cells than the header (an unquoted comma, or a quote left open)') if off else row
  )


def read_table(path: str) -> tuple[list[str], list[dict | BadRow]]:
  """The columns and rows of a .csv, .json (a list of objects), .jsonl or .parquet file.

  Undecodable bytes are kept as surrogate escapes (see ingest.clean_caption); a row that
  cannot be read (a bad JSON line, a CSV row with more or fewer cells than its header) is
  a `BadRow`. Parquet cells keep their types (binary captions stay bytes).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext == '.parquet':
    return _read_parquet(path)
  if ext == '.csv':
    with open(path, encoding='utf-8-sig', errors='surrogateescape', newline='') as f:
      reader = csv.DictReader(f)
      return list(reader.fieldnames or []), [_csv_row(row) for row in reader]
  if ext not in ('.json', '.jsonl'):
    raise OptionError(f'{path!r}: expected a .csv, .json, .jsonl or .parquet file.')
  rows = [BadRow('bad JSON line') if row is None else row for row in iter_json(path)]
  columns = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))
  return columns, rows
