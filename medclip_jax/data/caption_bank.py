"""Caption banks from files, for caption-by-retrieval (evaluation and inference; no JAX)."""

import csv
from pathlib import Path

from medclip_jax.data import ingest
from medclip_jax.errors import UserError


def read_bank_file(path) -> list[str]:
  """Captions from a .txt (one a line) or .csv (a 'caption' column) file."""
  path = Path(path)
  if not path.is_file():
    raise UserError(
      f'No caption bank file at {path}: give a .txt (one caption a line) or .csv file.'
    )
  if path.suffix.lower() not in ('.txt', '.csv', ''):
    # A .jsonl or .tsv read line by line would make each raw line a caption.
    raise UserError(
      f'The caption bank {path} is a {path.suffix} file: give a .txt file (one caption a line) '
      'or a .csv file with a "caption" column.'
    )
  # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark.
  try:
    if path.suffix.lower() == '.csv':
      with open(path, newline='', encoding='utf-8-sig') as f:
        reader = csv.DictReader(f)
        if 'caption' not in (reader.fieldnames or []):
          raise UserError(f'{path} has no "caption" column (its columns: {reader.fieldnames}).')
        texts = [_caption(row, reader, path) for row in reader]
    else:
      texts = [line.strip() for line in path.read_text(encoding='utf-8-sig').splitlines()]
  except UnicodeDecodeError as e:
    raise UserError(
      f'The caption bank {path} is not UTF-8 text ({e.reason}): it was probably saved in '
      'another encoding (e.g. by Excel as cp1252). Re-save it as UTF-8 (in Excel: "CSV UTF-8").'
    ) from e
  texts = [t for t in texts if t]
  if not texts:
    raise UserError(f'The caption bank {path} holds no captions.')
  return texts


def _caption(row: dict, reader: csv.DictReader, path: Path) -> str:
  if ingest.misaligned(row):
    raise UserError(
      f'{path}, line {reader.line_num}: the row has more or fewer cells than the header '
      f'({", ".join(reader.fieldnames)}): an unquoted comma, or a quote left open. Quote '
      'captions that hold commas ("like, this").'
    )
  return row['caption'].strip()
