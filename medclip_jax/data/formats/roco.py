"""`roco`: ROCO (v1 folder layout, images named as any version of its fetch.py names them)
or ROCOv2 (CSV), in their official splits."""

from __future__ import annotations

import os
from collections.abc import Iterator

from medclip_jax.data import ingest
from medclip_jax.data.formats import base

# ROCO's split folder -> our split, for ROCO (v1) and ROCOv2.
_ROCO_SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}
_ROCO2_SPLITS = {'train': 'train', 'valid': 'val', 'test': 'test'}


def _images_by_stem(directory: str) -> dict[str, str]:
  """Image paths in `directory` by file name without extension (ROCO ids)."""
  if not os.path.isdir(directory):
    return {}
  return {os.path.splitext(e.name)[0]: e.path for e in os.scandir(directory) if e.is_file()}


def _fetched_names(dlinks: str) -> dict[str, str]:
  """ROCO id -> the image's file name as ROCO's scripts/fetch.py saved it before 2022,
  `<PMC id>_<name in the article's package>`, from a dlinks.txt line
  `ROCO_ID<TAB>wget -r ftp://.../PMC123.tar.gz -P /path<TAB>name.jpg`."""
  names = {}
  if not os.path.isfile(dlinks):
    return names
  with open(dlinks, encoding='utf-8', errors='surrogateescape') as f:
    for line in f:
      parts = line.rstrip('\r\n').split('\t')
      package = [w for w in parts[1].split() if w.endswith('.tar.gz')] if len(parts) >= 3 else []
      if package:
        pmc_id = package[0].rsplit('/', 1)[-1][: -len('.tar.gz')]
        names[base.text(parts[0])] = f'{pmc_id}_{parts[-1].strip()}'
  return names


def _roco_entries(
  captions: str, split: str, images_dir: str
) -> Iterator[base.Entry | base.Skipped]:
  """The entries of ROCO (v1) captions.txt lines `ROCO_ID<TAB>caption`. An image is found
  under its ROCO id (as ROCO's scripts/fetch.py names it since 2022) or under the name
  earlier versions of fetch.py gave it (through dlinks.txt beside captions.txt)."""
  images = _images_by_stem(images_dir)
  fetched = _fetched_names(os.path.join(os.path.dirname(captions), 'dlinks.txt'))
  with open(captions, encoding='utf-8', errors='surrogateescape') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if '\t' not in line:
        yield base.Skipped(f'{split} line {number}', 'malformed line')
        continue
      roco_id, caption = line.rstrip('\r\n').split('\t', 1)
      roco_id = base.text(roco_id)
      path = images.get(roco_id)
      if path is None and roco_id in fetched:
        path = os.path.join(images_dir, fetched[roco_id])
      path = path or os.path.join(images_dir, roco_id + '.jpg')
      yield base.Entry(id=roco_id, group=roco_id, image=path, caption=caption, labels={})


def _roco2_entries(
  captions: str, split: str, images_dir: str
) -> Iterator[base.Entry | base.Skipped]:
  """The entries of a ROCOv2 {split}_captions.csv (columns ID, Caption)."""
  images = _images_by_stem(images_dir)
  columns, rows = base.read_table(captions)
  if 'ID' not in columns or 'Caption' not in columns:
    raise base.OptionError(f'{captions!r} must have columns ID and Caption, has {columns}.')
  for number, row in enumerate(rows, start=2):
    if isinstance(row, base.BadRow):
      yield base.Skipped(f'{split} line {number}', row.reason)
      continue
    roco_id = base.text(row['ID'])
    if not roco_id:
      yield base.Skipped(f'{split} line {number}', 'malformed line')
      continue
    path = images.get(roco_id, os.path.join(images_dir, roco_id + '.jpg'))
    yield base.Entry(id=roco_id, group=roco_id, image=path, caption=row['Caption'] or '', labels={})


def source(
  input: str | None = None,  # pylint: disable=redefined-builtin
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> base.Source:
  """ROCO ({train,validation,test}/radiology/) or ROCOv2, in its official splits."""
  base.check_real_options('roco', input, True, 0.0, 0.0, limit, max_side, max_bad_fraction)
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
    raise base.OptionError(
      f'--input={input!r} is not a ROCO directory: expected '
      '{train,validation,test}/radiology/captions.txt (ROCO) or '
      '{train,valid,test}_captions.csv (ROCOv2).'
    )
  split_of_id: dict[str, str] = {}

  def entries():
    for split, part in parts:
      for entry in part:
        if isinstance(entry, base.Entry):
          # The first occurrence wins; prepare skips later ones as duplicates.
          split_of_id.setdefault(entry.id, split)
        yield entry

  return base.real_source(
    entries(),
    lambda record: split_of_id[record['id']],
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
  )
