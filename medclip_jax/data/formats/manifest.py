"""`manifest`: a generic table of images, captions and optional labels.

The image column holds paths (relative to the table's folder, or absolute),
or, in Parquet tables, the image file's bytes: a binary cell, or a Hugging
Face `datasets` Image struct {'bytes', 'path'} (as in datasets saved to or
downloaded as Parquet). A record's id is its path, or for embedded bytes
without a path 'row N'; its group is --group_column's value, else its id.
Rows naming the same image are one record with several captions (in row
order, repeats dropped), taking its group and labels from the first of them.
With --unpaired, a row with an image but no caption becomes an image-only
record and a row with a caption but no image a text-only one (id 'row N'),
which training can mix in (config.data.unpaired); otherwise both are skipped.
"""

from __future__ import annotations

import os

from medclip_jax.data import ingest
from medclip_jax.data.formats import base


def source(
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
  unpaired: bool = False,
) -> base.Source:
  """A CSV / JSON / JSONL / Parquet table of images and captions (see the module docstring)."""
  base.check_real_options(
    'manifest', input, False, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  columns, rows = base.read_table(input)
  labels = [c.strip() for c in label_columns.split(',') if c.strip()]
  wanted = [image_column, caption_column, *labels, *([group_column] if group_column else [])]
  missing = [c for c in wanted if c not in columns]
  if missing:
    raise base.OptionError(
      f'{input!r} has no column {", ".join(map(repr, missing))}; its columns are '
      f'{", ".join(map(repr, columns))} (see --image_column, --caption_column, '
      '--label_columns, --group_column).'
    )
  root = os.path.dirname(os.path.abspath(input))

  def image_of(cell, number: int):
    """(id, path or loader) of an image cell; (None, None) if it has no image."""
    if isinstance(cell, dict):  # Hugging Face Image struct
      data, path = cell.get('bytes'), cell.get('path')
    elif isinstance(cell, bytes):
      data, path = cell, None
    else:
      data, path = None, cell
    # The id is clean text; the file is looked up by the name as read (it may
    # hold undecodable bytes, kept as surrogate escapes).
    name = base.text(path)
    if data:
      return name or f'row {number}', lambda max_side: ingest.load_image(data, max_side)
    if name:
      return name, ingest.find_image(str(path).strip(), [root])
    return None, None

  def entries():
    read = []  # (row number, row, image id, image) of every row
    rows_of = {}  # image id -> its rows
    for number, row in enumerate(rows, start=1):
      name, image = (None, None) if row is None else image_of(row.get(image_column), number)
      read.append((number, row, name, image))
      if name:
        rows_of.setdefault(name, []).append(row)
    # Each image at its first row, with the captions of all its rows.
    for number, row, name, image in read:
      if row is None:
        yield base.Skipped(f'row {number}', 'bad JSON line')
        continue
      if not name:
        if unpaired:  # a text without an image
          yield base.Entry(
            id=f'row {number}',
            group=(base.text(row.get(group_column)) if group_column else '') or f'row {number}',
            image=None,
            caption=row.get(caption_column) or '',
            labels={c: base.text(row.get(c)) for c in labels if base.text(row.get(c))},
          )
        else:
          yield base.Skipped(f'row {number}', 'no image path')
        continue
      image_rows = rows_of[name]
      if image_rows[0] is not row:
        continue  # a later row of an image already given
      group = base.text(row.get(group_column)) if group_column else name
      yield base.Entry(
        id=name,
        group=group or name,
        image=image,
        caption=row.get(caption_column) or '',
        labels={c: base.text(row.get(c)) for c in labels if base.text(row.get(c))},
        more_captions=tuple(other.get(caption_column) or '' for other in image_rows[1:]),
      )

  return base.grouped_source(
    entries(),
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    unpaired=unpaired,
  )
