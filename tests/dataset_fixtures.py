"""Tiny datasets in the manifest, MedPix and ROCO layouts, with every bad input.

Each writer fills a directory and returns (prepare options, expected ids of
the converted records, expected {id: reason} of the skipped inputs), in the
order prepare reports them. Every fixture holds images of every PIL mode and
a huge one, a group with several images, and each kind of bad input:
missing, zero-byte, non-image and truncated files, a blank caption, invalid
UTF-8 (repaired, so converted), a caption longer than any text tower takes
and a duplicate id.
"""

from tests.test_ingest import _bad_images
from tests.test_ingest import _csv_field
from tests.test_ingest import _good_images
from tests.test_ingest import _manifest
from tests.test_ingest import _write
from tests.test_ingest import _write_csv

MAX_SIDE = 64
LONG_CAPTION = 'The lesion is large. ' * 200  # ~1,000 tokens
BAD_UTF8 = b'bad \xff\xfe bytes'
# The fixtures are half bad on purpose; seed 18 puts groups of each fixture
# in all three splits.
OPTIONS = dict(
  max_side=MAX_SIDE, seed=18, val_fraction=0.25, test_fraction=0.25, max_bad_fraction=0.6
)


def write_manifest_fixture(directory):
  """test_ingest's messy manifest CSV (columns path, text, patient, modality) plus a long caption."""
  path, good, bad = _manifest(directory)
  _write(directory / 'data' / 'img', 'long.png', _good_images()['mode_rgba.png'])
  row = [b'img/long.png', LONG_CAPTION.encode(), b'patient-4', b'MR']
  with open(path, 'ab') as f:
    f.write(b','.join(map(_csv_field, row)) + b'\n')
  good.append('img/long.png')
  bad['img/mode_l.png'] = 'duplicate id'  # its last row
  options = dict(
    OPTIONS,
    input=path,
    image_column='path',
    caption_column='text',
    label_columns='modality',
    group_column='patient',
  )
  return options, good, bad


def write_medpix_fixture(directory):
  """A MedPix CSV export; case MPX0 has one image per mode (several images)."""
  header = ['Case_ID', 'filename', 'Caption', 'Core_Modality', 'Location', 'Plane']
  rows, good, bad = [], [], {}
  for i, (name, data) in enumerate(_good_images().items()):
    # Images may sit next to the export or in images/.
    _write(directory / 'images' if i % 2 else directory, name, data)
    rows.append(['MPX0', name, f'Axial CT number {i}', 'CT', 'Brain', 'Axial'])
    good.append(name)
  for case, (name, (data, reason)) in enumerate(_bad_images().items(), start=1):
    _write(directory / 'images', name, data)
    rows.append([f'MPX{case}', name, 'A caption', 'MR', 'Spine', 'Sagittal'])
    bad[name] = reason
  for case, (name, caption) in enumerate(
    [('blank.png', '   '), ('utf8.png', BAD_UTF8), ('long.png', LONG_CAPTION)], start=10
  ):
    _write(directory / 'images', name, _good_images()['mode_p.png'])
    rows.append([f'MPX{case}', name, caption, 'MR', 'Spine', 'Sagittal'])
  bad['blank.png'] = 'empty caption'
  good += ['utf8.png', 'long.png']
  rows.append(['MPX20', 'mode_l.png', 'A repeated file name', 'MR', 'Chest', 'Coronal'])
  bad['mode_l.png'] = 'duplicate id'
  path = directory / 'export.csv'
  _write_csv(path, header, rows)
  return dict(OPTIONS, input=str(path)), good, bad


def write_roco_fixture(directory):
  """ROCO (v1) folders; ids are ROCO_NNNNN, images named by id."""
  lines = {'train': [], 'validation': [], 'test': []}
  good, bad = [], {}
  images = {folder: directory / folder / 'radiology' / 'images' for folder in lines}
  number = 0

  def add(folder, extension, data, caption):
    nonlocal number
    number += 1
    roco_id = f'ROCO_{number:05d}'
    _write(images[folder], roco_id + extension, data)
    lines[folder].append(roco_id.encode() + b'\t' + caption)
    return roco_id

  folders = list(lines)
  for i, (name, data) in enumerate(_good_images().items()):
    good.append(add(folders[i % 3], name[name.index('.') :], data, b'CT image %d' % i))
  for name, (data, reason) in _bad_images().items():
    bad[add('train', name[name.index('.') :], data, b'a caption')] = reason
  bad[add('train', '.png', _good_images()['mode_l.png'], b'  ')] = 'empty caption'
  good.append(add('test', '.png', _good_images()['mode_l.png'], BAD_UTF8))
  good.append(add('validation', '.png', _good_images()['mode_l.png'], LONG_CAPTION.encode()))
  lines['train'].append(b'no tab on this line')
  bad['train line %d' % len(lines['train'])] = 'malformed line'
  lines['train'].append(b'ROCO_00001\tthe first image again')
  bad['ROCO_00001'] = 'duplicate id'
  for folder, folder_lines in lines.items():
    (directory / folder / 'radiology' / 'captions.txt').write_bytes(
      b'\n'.join(folder_lines) + b'\n'
    )
  options = dict(OPTIONS, input=str(directory))
  for name in ('seed', 'val_fraction', 'test_fraction'):
    del options[name]  # ROCO keeps its official splits
  return options, good, bad
