"""`medpix`: a MedPix CSV / JSON export, split by case (its case_id or uid column; without
one, by image, with a warning: images of one case may then land in different splits)."""

from __future__ import annotations

import os
import re

from medclip_jax.data import ingest
from medclip_jax.data.formats import base


def _normalized(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', name.lower())


# MedPix label -> its column (normalized: lower case, letters and digits only).
_MEDPIX_LABELS = {'modality': 'coremodality', 'body_part': 'location', 'plane': 'plane'}
_MEDPIX_CASE_COLUMNS = ('caseid', 'uid')


def source(
  input: str | None = None,  # pylint: disable=redefined-builtin
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> base.Source:
  """A MedPix-style CSV / JSON export: filename, Caption, Core_Modality, ..."""
  base.check_real_options(
    'medpix', input, False, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  columns, rows = base.read_table(input)
  column = {_normalized(c): c for c in columns}
  for needed in ('filename', 'caption'):
    if needed not in column:
      raise base.OptionError(
        f'{input!r} has no {needed!r} column (MedPix exports have filename and Caption); '
        f'its columns are {", ".join(map(repr, columns))}.'
      )
  case_column = next((column[c] for c in _MEDPIX_CASE_COLUMNS if c in column), None)
  labels = {name: column[c] for name, c in _MEDPIX_LABELS.items() if c in column}
  root = os.path.dirname(os.path.abspath(input))
  directories = [root, os.path.join(root, 'images')]

  notes = []
  if not case_column:
    notes.append(
      f'{input} has no case column (case_id or uid), so it was split by image: images of one '
      'case may be in different splits, which inflates evaluation figures.'
    )

  def entries():
    for number, row in enumerate(rows, start=1):
      if isinstance(row, base.BadRow):
        yield base.Skipped(f'row {number}', row.reason)
        continue
      name = base.text(row.get(column['filename']))
      if not name:
        yield base.Skipped(f'row {number}', 'no image path')
        continue
      case = base.text(row.get(case_column)) if case_column else ''
      yield base.Entry(
        id=name,
        group=case or os.path.splitext(os.path.basename(name))[0],
        image=ingest.find_image(str(row[column['filename']]).strip(), directories),
        caption=row.get(column['caption']) or '',
        labels={k: base.text(row.get(c)) for k, c in labels.items() if base.text(row.get(c))},
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
    warnings=notes,
  )
