"""`manifest`: a generic table of images, captions and optional labels.

The image column holds paths (relative to the table's folder, or absolute;
Windows' backslashes work too), or, in Parquet tables, the image file's bytes: a
binary cell, or a Hugging Face `datasets` Image struct {'bytes', 'path'} (as in
datasets saved to or downloaded as Parquet). Rows of the same image are one
record with several captions (in row order, repeats dropped), taking its group
and labels from the first of them (prepare warns where later rows disagree):
rows naming the same file (however its path is spelled), or for embedded bytes
rows with the same name and the same bytes (`datasets` keeps only a file's base
name, so thousands of different images may share a name like view1_frontal.jpg).
A record's id is its path or name, 'NAME (row N)' for a different image under a
name an earlier row used (N: its first row), or 'row N' for embedded bytes
without a name; its group is --group_column's value, else its id. A caption cell
may also hold a list of captions. A path to a DICOM file is read by the dicom
format's rules (its tags are not used). With --unpaired, a row with an image but
no caption becomes an image-only record and a row with a caption but no image a
text-only one (id 'row N'), which training can mix in (config.data.unpaired);
otherwise both are skipped. A CSV row with more or fewer cells than the header
(an unquoted comma, a quote left open) is skipped and counted, not read shifted.
"""

from __future__ import annotations

import functools
import os

from medclip_jax.data import images
from medclip_jax.data import ingest
from medclip_jax.data.formats import base
from medclip_jax.data.formats import dicom


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
  labels = [c.strip() for c in label_columns.split(',') if c.strip()]
  dotted = [c for c in labels if '.' in c]
  if dotted:
    # Configs key zero-shot prompts by label name (config.evals.zeroshot.templates.<name>),
    # and a config field name cannot hold a dot.
    raise base.OptionError(
      f'--label_columns: {", ".join(map(repr, dotted))} cannot be a label name: label names '
      'become config field names (config.evals.zeroshot.templates.<name>), which cannot hold '
      f'a dot. Rename the column in {input!r} (e.g. to {dotted[0].replace(".", "_")!r}).'
    )
  columns, rows = base.read_table(input)
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
    """(key, name, path or loader) of an image cell, rows of one image sharing its key;
    (None, None, None) if it has no image."""
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
      name = name or f'row {number}'
      return (name, data), name, lambda max_side: ingest.load_image(data, max_side)
    if name:
      found = ingest.find_image(str(path).strip(), [root])
      if not os.path.isfile(found):
        return name, name, found  # loading it reports the missing file
      # Rows naming one file in different ways ('a.png', './a.png', an absolute path) are
      # one image, whose rows must not be split apart.
      key = os.path.realpath(found)
      if images.is_dicom(found):
        return key, name, functools.partial(dicom.load_image, found)
      return key, name, found
    return None, None, None

  def labels_of(row) -> dict:
    return {c: base.text(row.get(c)) for c in labels if base.text(row.get(c))}

  def group_of(row) -> str:
    return base.text(row.get(group_column)) if group_column else ''

  disagreeing = []  # images whose later rows give other labels or another group
  notes = []  # filled once the entries are read (dataset_info.json's 'warnings')

  def entries():
    read = []  # (row number, row, image key, image) of every row
    rows_of = {}  # image key -> its rows
    id_of = {}  # image key -> record id
    names = set()  # the names of the images found so far
    for number, row in enumerate(rows, start=1):
      key, name, image = (
        (None,) * 3 if isinstance(row, base.BadRow) else image_of(row.get(image_column), number)
      )
      read.append((number, row, key, image))
      if key is None:
        continue
      if key not in rows_of:
        id_of[key] = f'{name} (row {number})' if name in names else name
        names.add(name)
      rows_of.setdefault(key, []).append(row)
    # Each image at its first row, with the captions of all its rows.
    for number, row, key, image in read:
      if isinstance(row, base.BadRow):
        yield base.Skipped(f'row {number}', row.reason)
        continue
      if key is None:
        if unpaired:  # a text without an image
          yield base.Entry(
            id=f'row {number}',
            group=group_of(row) or f'row {number}',
            image=None,
            caption=row.get(caption_column),
            labels=labels_of(row),
          )
        else:
          yield base.Skipped(f'row {number}', 'no image path')
        continue
      image_rows = rows_of[key]
      if image_rows[0] is not row:
        continue  # a later row of an image already given
      record_id = id_of[key]
      if any(
        (labels_of(other), group_of(other)) != (labels_of(row), group_of(row))
        for other in image_rows[1:]
      ):
        disagreeing.append(record_id)
      yield base.Entry(
        id=record_id,
        group=group_of(row) or record_id,
        image=image,
        caption=row.get(caption_column),
        labels=labels_of(row),
        more_captions=tuple(other.get(caption_column) for other in image_rows[1:]),
      )
    if disagreeing:
      notes.append(
        f'{len(disagreeing)} image(s) have rows that disagree on their labels or group (e.g. '
        f'{", ".join(map(repr, disagreeing[:3]))}): each record took them from its first row.'
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
    warnings=notes,
  )
