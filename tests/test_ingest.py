"""Tests of the real-dataset formats (manifest, medpix, roco) and their helpers."""

import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import ingest
from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data.formats import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SIDE = 64


def _png(image):
  out = io.BytesIO()
  image.save(out, 'PNG')
  return out.getvalue()


def _jpeg(image):
  out = io.BytesIO()
  image.save(out, 'JPEG')
  return out.getvalue()


def _noise(mode, size=(40, 30), seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def _good_images():
  """Name -> file bytes, one per PIL mode (and one huge JPEG)."""
  i16 = Image.fromarray(np.linspace(1000, 3000, 40 * 30).reshape(30, 40).astype(np.uint16))
  assert i16.mode.startswith('I;16')
  return {
    'mode_1.png': _png(_noise('1')),
    'mode_l.png': _png(_noise('L')),
    'mode_i16.png': _png(i16),
    'mode_p.png': _png(_noise('P')),
    'mode_rgba.png': _png(_noise('RGBA')),
    'mode_cmyk.jpg': _jpeg(_noise('CMYK')),
    'huge.jpg': _jpeg(Image.new('L', (6000, 6000), 128)),
  }


def _bad_images():
  """Name -> file bytes (None: no file) and the reason each is skipped."""
  png = _png(_noise('RGB', (200, 200)))
  jpg = _jpeg(_noise('RGB', (200, 200)))
  return {
    'missing.png': (None, 'missing file'),
    'empty.png': (b'', 'empty file'),
    'text.png': (b'this is not an image\n', 'not an image'),
    'truncated.png': (png[: len(png) // 2], 'truncated or corrupt image'),
    'truncated.jpg': (jpg[: len(jpg) // 2], 'truncated or corrupt image'),
  }


def _write(directory, name, data):
  if data is not None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(data)


def _csv_field(value):
  return b'"' + value.replace(b'"', b'""') + b'"'


def _write_csv(path, header, rows):
  lines = [b','.join(_csv_field(h.encode()) for h in header)]
  for row in rows:
    lines.append(b','.join(_csv_field(v if isinstance(v, bytes) else v.encode()) for v in row))
  with open(path, 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')


def _manifest(tmp_path):
  """A manifest CSV with good images of every mode and every kind of bad input.

  Returns (path, expected converted ids, expected skipped {id: reason}).
  """
  images = tmp_path / 'data' / 'img'
  rows, good, bad = [], [], {}
  for i, (name, data) in enumerate(_good_images().items()):
    _write(images, name, data)
    rows.append([f'img/{name}', f'  A  scan\tnumber {i}\n', f'patient-{i % 3}', 'CT'])
    good.append(f'img/{name}')
  for name, (data, reason) in _bad_images().items():
    _write(images, name, data)
    rows.append([f'img/{name}', 'a caption', 'patient-9', 'MR'])
    bad[f'img/{name}'] = reason
  _write(images, 'blank_caption.png', _png(_noise('L', seed=1)))
  rows.append(['img/blank_caption.png', ' \t ', 'patient-9', 'MR'])
  bad['img/blank_caption.png'] = 'empty caption'
  _write(images, 'bad_utf8.png', _png(_noise('L', seed=2)))
  rows.append(['img/bad_utf8.png', b'bad \xff\xfe bytes', 'patient-1', 'MR'])
  good.append('img/bad_utf8.png')
  rows.append(['img/mode_l.png', 'the same image again', 'patient-1', 'CT'])  # duplicate id
  path = tmp_path / 'data' / 'manifest.csv'
  _write_csv(path, ['path', 'text', 'patient', 'modality'], rows)
  return str(path), good, bad


def _manifest_options(**overrides):
  options = dict(
    image_column='path',
    caption_column='text',
    label_columns='modality',
    group_column='patient',
    max_side=MAX_SIDE,
    val_fraction=0.3,
    test_fraction=0.3,
    max_bad_fraction=0.5,
  )
  options.update(overrides)
  return options


def _all_records(data_dir):
  return {
    split: list(records.read_records(records.split_files(str(data_dir), split)))
    for split in records.SPLITS
  }


def _assert_groups_in_one_split(by_split):
  split_of_group = collections.defaultdict(set)
  for split, recs in by_split.items():
    for rec in recs:
      split_of_group[rec['group']].add(split)
  assert all(len(s) == 1 for s in split_of_group.values()), split_of_group


# ----------------------------------------------------------------------------
# ingest helpers


@pytest.mark.parametrize(
  'mode,want',
  [
    ('1', 'L'),
    ('L', 'L'),
    ('I;16', 'L'),
    ('I', 'L'),
    ('F', 'L'),
    ('LA', 'L'),
    ('P', 'RGB'),
    ('RGBA', 'RGB'),
    ('CMYK', 'RGB'),
    ('RGB', 'RGB'),
  ],
)
def test_load_image_converts_every_mode(mode, want):
  if mode in ('I;16', 'I', 'F'):
    dtype = {'I;16': np.uint16, 'I': np.int32, 'F': np.float32}[mode]
    image = Image.fromarray(
      np.linspace(-5 if mode != 'I;16' else 5, 900, 600).astype(dtype).reshape(20, 30)
    )
    assert image.mode == mode
  else:
    image = _noise(mode, (30, 20))
  if mode in ('I', 'F', 'CMYK'):  # not writable as PNG
    data = io.BytesIO()
    image.save(data, 'TIFF')
    data = data.getvalue()
  else:
    data = _png(image)
  out = Image.open(io.BytesIO(ingest.load_image(data)))
  assert out.format == 'PNG' and out.mode == want and out.size == (30, 20)
  if mode in ('I;16', 'I', 'F'):  # stretched by min and max
    pixels = np.asarray(out)
    assert pixels.min() == 0 and pixels.max() == 255


def test_load_image_composites_alpha_on_black():
  image = Image.new('RGBA', (4, 4), (200, 100, 50, 0))
  image.putpixel((0, 0), (200, 100, 50, 255))
  pixels = np.asarray(Image.open(io.BytesIO(ingest.load_image(_png(image)))))
  assert pixels[0, 0].tolist() == [200, 100, 50]
  assert pixels[1, 1].tolist() == [0, 0, 0]


def test_load_image_shrinks_huge_images():
  huge = _jpeg(Image.new('RGB', (6000, 3000), (10, 20, 30)))
  out = Image.open(io.BytesIO(ingest.load_image(huge, max_side=100)))
  assert out.size == (100, 50) and out.mode == 'RGB'


def test_load_image_reasons(tmp_path, monkeypatch):
  for name, (data, reason) in _bad_images().items():
    _write(tmp_path, name, data)
    with pytest.raises(ingest.BadRecord) as e:
      ingest.load_image(str(tmp_path / name))
    assert e.value.reason == reason, name
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # the bomb limit is twice this
  with pytest.raises(ingest.BadRecord, match='image too large'):
    ingest.load_image(_png(_noise('L', (100, 100))))


def test_clean_caption():
  assert ingest.clean_caption('  a\n\tb  c ') == ('a b c', False)
  assert ingest.clean_caption(b'x \xff y') == ('x \ufffd y', True)
  assert ingest.clean_caption(b'caf\xc3\xa9') == ('caf\u00e9', False)
  for empty in ('', ' \n\t ', b'  '):
    with pytest.raises(ingest.BadRecord, match='empty caption'):
      ingest.clean_caption(empty)


def test_split_by_group_is_deterministic_and_honours_fractions():
  splits = [ingest.split_by_group(f'case-{i}', 0, 0.2, 0.1) for i in range(2000)]
  assert splits == [ingest.split_by_group(f'case-{i}', 0, 0.2, 0.1) for i in range(2000)]
  counts = collections.Counter(splits)
  assert 340 < counts['val'] < 460 and 140 < counts['test'] < 260
  assert splits != [ingest.split_by_group(f'case-{i}', 1, 0.2, 0.1) for i in range(2000)]
  assert {ingest.split_by_group(f'case-{i}', 0, 0.0, 0.0) for i in range(100)} == {'train'}


# ----------------------------------------------------------------------------
# manifest


def test_manifest_converts_good_and_reports_bad(tmp_path):
  path, good, bad = _manifest(tmp_path)
  out = tmp_path / 'out'
  info = prepare.prepare('manifest', str(out), input=path, **_manifest_options())
  assert info == records.read_dataset_info(str(out))
  assert info['converted'] == len(good) == 8
  # The last row repeats img/mode_l.png.
  assert info['skipped'] == [{'id': i, 'reason': r} for i, r in bad.items()] + [
    {'id': 'img/mode_l.png', 'reason': 'duplicate id'}
  ]
  assert len(info['skipped']) == 7
  assert info['repaired'] == [
    {'id': 'img/bad_utf8.png', 'reason': 'invalid UTF-8 in caption replaced'}
  ]
  assert info['labels'] == {'modality': ['CT', 'MR']}
  by_split = _all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  recs = {r['id']: r for split in by_split.values() for r in split}
  assert sorted(recs) == sorted(good)
  _assert_groups_in_one_split(by_split)
  assert recs['img/mode_1.png']['caption'] == 'A scan number 0'
  assert recs['img/bad_utf8.png']['caption'] == 'bad \ufffd\ufffd bytes'
  assert recs['img/mode_1.png']['group'] == 'patient-0'
  modes = {}
  for rec in recs.values():
    image = Image.open(io.BytesIO(rec['image']))
    assert max(image.size) <= MAX_SIDE
    modes[rec['id']] = image.mode
  assert modes['img/mode_i16.png'] == 'L' and modes['img/mode_cmyk.jpg'] == 'RGB'
  assert Image.open(io.BytesIO(recs['img/huge.jpg']['image'])).size == (MAX_SIDE, MAX_SIDE)


def test_manifest_jsonl_default_columns_limit_and_groups(tmp_path):
  _write(tmp_path, 'a.png', _png(_noise('L')))
  lines = [json.dumps({'image': 'a.png', 'caption': f'caption {i}'}) for i in range(1)]
  for i in range(20):
    _write(tmp_path / 'sub', f'{i}.png', _png(_noise('L', seed=i)))
    lines.append(json.dumps({'image': f'sub/{i}.png', 'caption': f'caption {i}'}))
  lines.append('{not json')
  (tmp_path / 'm.jsonl').write_text('\n'.join(lines) + '\n')
  info = prepare.prepare(
    'manifest',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'm.jsonl'),
    max_side=MAX_SIDE,
    val_fraction=0.25,
    test_fraction=0.25,
    max_bad_fraction=0.1,
  )
  assert info['converted'] == 21
  assert info['skipped'] == [{'id': 'row 22', 'reason': 'bad JSON line'}]
  by_split = _all_records(tmp_path / 'out')
  assert all(r['group'] == r['id'] for recs in by_split.values() for r in recs)
  assert all(by_split[s] for s in records.SPLITS)  # 21 groups over 3 splits
  limited = prepare.prepare(
    'manifest', str(tmp_path / 'few'), input=str(tmp_path / 'm.jsonl'), limit=5
  )
  assert limited['converted'] == 5 and limited['skipped'] == []


def test_too_many_bad_records_fails_and_writes_nothing(tmp_path):
  path, _, _ = _manifest(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(prepare.TooManyBadRecords) as e:
    prepare.prepare('manifest', str(out), input=path, **_manifest_options(max_bad_fraction=0.05))
  message = str(e.value)
  assert '7 of 15 manifest inputs (46.7%)' in message
  assert 'max_bad_fraction=0.05' in message
  for reason in ('missing file: 1', 'truncated or corrupt image: 2', 'duplicate id: 1'):
    assert reason in message
  assert not os.path.exists(out / records.DATASET_INFO)
  assert not [n for n in os.listdir(out) if 'array_record' in n]


def test_bad_options_are_reported(tmp_path):
  with pytest.raises(prepare.OptionError, match='needs --input'):
    prepare.prepare('manifest', str(tmp_path / 'o'))
  with pytest.raises(prepare.OptionError, match='does not exist'):
    prepare.prepare('medpix', str(tmp_path / 'o'), input=str(tmp_path / 'nope.csv'))
  (tmp_path / 'm.csv').write_text('file,text\na.png,hi\n')
  with pytest.raises(prepare.OptionError, match="no column 'image', 'caption'.*'file', 'text'"):
    prepare.prepare('manifest', str(tmp_path / 'o'), input=str(tmp_path / 'm.csv'))
  with pytest.raises(prepare.OptionError, match='add up to less than 1'):
    prepare.prepare(
      'manifest',
      str(tmp_path / 'o'),
      input=str(tmp_path / 'm.csv'),
      val_fraction=0.5,
      test_fraction=0.5,
    )
  with pytest.raises(prepare.OptionError, match='not a ROCO directory'):
    prepare.prepare('roco', str(tmp_path / 'o'), input=str(tmp_path))


# ----------------------------------------------------------------------------
# medpix


def test_medpix_keeps_cases_together_and_labels(tmp_path):
  export, expected_groups = [], {}
  for case in range(8):
    for image in range(3 if case == 0 else 1):
      name = f'case{case}_{image}.png'
      # Case 0 lives in images/, the others next to the export.
      _write(tmp_path / 'images' if case == 0 else tmp_path, name, _png(_noise('L', seed=case)))
      export.append(
        {
          'Case_ID': f'MPX{case}',
          'filename': name,
          'Caption': f'Axial CT of case {case}',
          'Core_Modality': 'CT' if case % 2 else 'MR',
          'Location': 'Brain',
          'Plane': 'Axial',
          'Case_Diagnosis': 'Glioma',
        }
      )
      expected_groups[name] = f'MPX{case}'
  export.append({'Case_ID': 'MPX9', 'filename': 'gone.png', 'Caption': 'lost'})
  (tmp_path / 'medpix.json').write_text(json.dumps(export))
  info = prepare.prepare(
    'medpix',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'medpix.json'),
    max_side=MAX_SIDE,
    val_fraction=0.3,
    test_fraction=0.3,
    max_bad_fraction=0.2,
  )
  assert info['converted'] == 10
  assert info['skipped'] == [{'id': 'gone.png', 'reason': 'missing file'}]
  assert info['labels'] == {'body_part': ['Brain'], 'modality': ['CT', 'MR'], 'plane': ['Axial']}
  by_split = _all_records(tmp_path / 'out')
  _assert_groups_in_one_split(by_split)
  recs = {r['id']: r for split in by_split.values() for r in split}
  assert {i: r['group'] for i, r in recs.items()} == expected_groups
  assert recs['case1_0.png']['labels'] == {'body_part': 'Brain', 'modality': 'CT', 'plane': 'Axial'}
  case0 = [s for s, rs in by_split.items() for r in rs if r['group'] == 'MPX0']
  assert len(case0) == 3 and len(set(case0)) == 1


def test_medpix_csv_without_case_column_groups_by_file_stem(tmp_path):
  _write(tmp_path / 'images', 'a.jpg', _jpeg(_noise('RGB')))
  _write_csv(
    tmp_path / 'export.csv', ['filename', 'Caption', 'Plane'], [['a.jpg', 'x', 'Sagittal']]
  )
  info = prepare.prepare('medpix', str(tmp_path / 'out'), input=str(tmp_path / 'export.csv'))
  assert info['converted'] == 1 and info['labels'] == {'plane': ['Sagittal']}
  (rec,) = [r for rs in _all_records(tmp_path / 'out').values() for r in rs]
  assert rec['group'] == 'a' and rec['labels'] == {'plane': 'Sagittal'}


# ----------------------------------------------------------------------------
# roco


def test_roco_keeps_official_splits(tmp_path):
  counts = {'train': 3, 'validation': 2, 'test': 1}
  number = 0
  for folder, count in counts.items():
    radiology = tmp_path / folder / 'radiology'
    lines = []
    for _ in range(count):
      number += 1
      _write(radiology / 'images', f'ROCO_{number:05d}.jpg', _jpeg(_noise('L', seed=number)))
      lines.append(f'ROCO_{number:05d}\t CT scan number {number} ')
    if folder == 'train':
      lines += ['no tab here', 'ROCO_99999\tmissing image', 'ROCO_00001\tduplicate']
    (radiology / 'captions.txt').write_text('\n'.join(lines) + '\n')
  info = prepare.prepare(
    'roco', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=0.5
  )
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 3, 'val': 2, 'test': 1}
  assert info['skipped'] == [
    {'id': 'train line 4', 'reason': 'malformed line'},
    {'id': 'ROCO_99999', 'reason': 'missing file'},
    {'id': 'ROCO_00001', 'reason': 'duplicate id'},
  ]
  by_split = _all_records(tmp_path / 'out')
  assert [r['id'] for r in by_split['val']] == ['ROCO_00004', 'ROCO_00005']
  assert by_split['train'][0]['caption'] == 'CT scan number 1'


def test_rocov2_csv_layout(tmp_path):
  folders = {'train': 'train', 'valid': 'val', 'test': 'test'}
  for i, folder in enumerate(folders):
    image_id = f'ROCOv2_2023_{folder}_{i:06d}'
    _write(tmp_path / folder, image_id + '.png', _png(_noise('RGB', seed=i)))
    _write_csv(tmp_path / f'{folder}_captions.csv', ['ID', 'Caption'], [[image_id, f'x ray {i}']])
  info = prepare.prepare('roco', str(tmp_path / 'out'), input=str(tmp_path))
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 1, 'val': 1, 'test': 1}
  by_split = _all_records(tmp_path / 'out')
  assert by_split['val'][0]['id'] == 'ROCOv2_2023_valid_000001'


# ----------------------------------------------------------------------------
# The command line.


def _run_cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'medclip_jax.data.prepare', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_reports_bad_data_and_missing_input_in_one_line(tmp_path):
  path, _, _ = _manifest(tmp_path)
  result = _run_cli(
    '--format=manifest',
    f'--output={tmp_path / "out"}',
    f'--input={path}',
    '--image_column=path',
    '--caption_column=text',
  )
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert 'could not be converted' in result.stderr and 'missing file: 1' in result.stderr
  result = _run_cli('--format=roco', f'--output={tmp_path / "out"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert "format 'roco' needs --input" in result.stderr
  result = _run_cli(
    '--format=manifest',
    f'--output={tmp_path / "ok"}',
    f'--input={path}',
    '--image_column=path',
    '--caption_column=text',
    '--max_bad_fraction=0.6',
    f'--max_side={MAX_SIDE}',
  )
  assert result.returncode == 0, result.stderr
  assert '7 skipped' in result.stdout


def test_training_runs_on_a_prepared_manifest_with_messy_records(tmp_path, tiny_config):
  from medclip_jax import train  # pylint: disable=import-outside-toplevel

  path, _, _ = _manifest(tmp_path)
  out = tmp_path / 'prepared'
  prepare.prepare(
    'manifest', str(out), input=path, **_manifest_options(val_fraction=0.0, test_fraction=0.0)
  )
  config = tiny_config()
  config.data.dir = str(out)
  config.train.steps = 3
  config.eval.split = 'train'  # everything is in train
  config.eval.zeroshot = {'modality': ('{} scan.',)}
  config.eval.class_names = {}
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['retrieval.gallery_size'] == 8
  assert 'zeroshot.modality.top1' in results


def test_manifest_parquet_reads_like_csv(tmp_path):
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  from tests import dataset_fixtures  # pylint: disable=import-outside-toplevel

  options, good, bad = dataset_fixtures.write_manifest_fixture(tmp_path)
  columns, rows = base.read_table(options['input'])
  # Captions as raw bytes: Parquet strings must be UTF-8, binary cells need not.
  table = {c: [row[c] for row in rows] for c in columns}
  table['text'] = [t.encode('utf-8', 'surrogateescape') for t in table['text']]
  parquet = os.path.splitext(options['input'])[0] + '.parquet'  # beside the CSV and images
  pyarrow.parquet.write_table(pyarrow.table(table), parquet)
  from_csv = prepare.prepare('manifest', str(tmp_path / 'csv'), **options)
  from_parquet = prepare.prepare(
    'manifest', str(tmp_path / 'parquet'), **{**options, 'input': str(parquet)}
  )
  for key in ('converted', 'skipped', 'repaired', 'labels', 'label_counts', 'splits'):
    assert from_parquet[key] == from_csv[key], key
  assert from_parquet['converted'] == len(good) and len(from_parquet['skipped']) == len(bad)
  (tmp_path / 'broken.parquet').write_bytes(b'PAR1 not really')
  with pytest.raises(prepare.OptionError, match='not a readable Parquet file'):
    prepare.prepare('manifest', str(tmp_path / 'x'), input=str(tmp_path / 'broken.parquet'))


def test_manifest_parquet_with_embedded_images(tmp_path):
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  good, bad = _good_images(), _bad_images()
  # Hugging Face datasets' Image struct: bytes, with or without the file's name.
  cells = [{'bytes': good['mode_l.png'], 'path': 'scan_a.png'}]
  cells.append({'bytes': good['mode_cmyk.jpg'], 'path': None})
  cells.append({'bytes': bad['truncated.png'][0], 'path': 'broken.png'})
  cells.append({'bytes': None, 'path': None})
  captions = ['Axial CT.', 'Chest X-ray.', 'Broken.', 'No image.']
  table = pyarrow.table({'image': cells, 'caption': captions})
  pyarrow.parquet.write_table(table, tmp_path / 'train.parquet')
  info = prepare.prepare(
    'manifest',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'train.parquet'),
    max_side=MAX_SIDE,
    max_bad_fraction=0.5,
  )
  assert info['skipped'] == [
    {'id': 'broken.png', 'reason': 'truncated or corrupt image'},
    {'id': 'row 4', 'reason': 'no image path'},
  ]
  recs = {r['id']: r for rs in _all_records(tmp_path / 'out').values() for r in rs}
  assert sorted(recs) == ['row 2', 'scan_a.png']
  assert Image.open(io.BytesIO(recs['row 2']['image'])).mode == 'RGB'  # CMYK converted
  assert recs['scan_a.png']['caption'] == 'Axial CT.'
