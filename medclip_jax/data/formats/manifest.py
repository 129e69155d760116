"""`manifest`: a generic table of image paths, captions and optional labels."""

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
) -> base.Source:
  """A CSV / JSON / JSONL / Parquet table of image paths (relative to it) and captions."""
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

  def entries():
    for number, row in enumerate(rows, start=1):
      if row is None:
        yield base.Skipped(f'row {number}', 'bad JSON line')
        continue
      name = base.text(row.get(image_column))
      if not name:
        yield base.Skipped(f'row {number}', 'no image path')
        continue
      group = base.text(row.get(group_column)) if group_column else name
      yield base.Entry(
        id=name,
        group=group or name,
        image=ingest.find_image(str(row[image_column]).strip(), [root]),
        caption=row.get(caption_column) or '',
        labels={c: base.text(row.get(c)) for c in labels if base.text(row.get(c))},
      )

  return base.real_source(
    entries(),
    base.hash_split(seed, val_fraction, test_fraction),
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
  )
