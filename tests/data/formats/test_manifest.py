"""Tests of the manifest format (CSV, JSONL and Parquet tables of image paths or embedded
images), the options every real format checks, the prepare command line on bad data, and
training on a prepared manifest."""

import io
import json
import os

import pytest
from PIL import Image

from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data.formats import base
from tests.helpers import MAX_SIDE
from tests.helpers import all_records
from tests.helpers import records_by_id
from tests.helpers import assert_groups_in_one_split
from tests.helpers import assert_nothing_written
from tests.helpers import bad_images
from tests.helpers import good_images
from tests.helpers import noise
from tests.helpers import png
from tests.helpers import run_module
from tests.helpers import write
from tests.helpers import write_csv
from tests.helpers import write_dicom_fixture
from tests.helpers import write_manifest
from tests.helpers import write_manifest_fixture


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


def test_manifest_converts_good_and_reports_bad(tmp_path):
  path, good, bad = write_manifest(tmp_path)
  out = tmp_path / 'out'
  info = prepare.prepare('manifest', str(out), input=path, **_manifest_options())
  assert info == records.read_dataset_info(str(out))
  assert info['converted'] == len(good) == 8
  assert info['skipped'] == [{'id': i, 'reason': r} for i, r in bad.items()]
  assert len(info['skipped']) == 6
  assert info['repaired'] == [
    {'id': 'img/bad_utf8.png', 'reason': 'invalid UTF-8 in caption replaced'}
  ]
  assert info['labels'] == {'modality': ['CT', 'MR']}
  by_split = all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  recs = {r['id']: r for split in by_split.values() for r in split}
  assert sorted(recs) == sorted(good)
  assert_groups_in_one_split(by_split)
  assert recs['img/mode_1.png']['caption'] == 'A scan number 0'
  assert recs['img/bad_utf8.png']['caption'] == 'bad \ufffd\ufffd bytes'
  assert recs['img/mode_1.png']['group'] == 'patient-0'
  # The last row names img/mode_l.png again: a second caption, not a second record.
  assert recs['img/mode_l.png']['captions'] == ['A scan number 1', 'the same image again']
  assert 'captions' not in recs['img/mode_1.png']
  assert sum(s['captions'] for s in info['splits'].values()) == len(good) + 1
  modes = {}
  for rec in recs.values():
    image = Image.open(io.BytesIO(rec['image']))
    assert max(image.size) <= MAX_SIDE
    modes[rec['id']] = image.mode
  assert modes['img/mode_i16.png'] == 'L' and modes['img/mode_cmyk.jpg'] == 'RGB'
  assert Image.open(io.BytesIO(recs['img/huge.jpg']['image'])).size == (MAX_SIDE, MAX_SIDE)


def test_manifest_jsonl_default_columns_limit_and_groups(tmp_path):
  write(tmp_path, 'a.png', png(noise('L')))
  lines = [json.dumps({'image': 'a.png', 'caption': f'caption {i}'}) for i in range(1)]
  for i in range(20):
    write(tmp_path / 'sub', f'{i}.png', png(noise('L', seed=i)))
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
  by_split = all_records(tmp_path / 'out')
  assert all(r['group'] == r['id'] for recs in by_split.values() for r in recs)
  assert all(by_split[s] for s in records.SPLITS)  # 21 groups over 3 splits
  limited = prepare.prepare(
    'manifest', str(tmp_path / 'few'), input=str(tmp_path / 'm.jsonl'), limit=5
  )
  assert limited['converted'] == 5 and limited['skipped'] == []


def test_too_many_bad_records_fails_and_writes_nothing(tmp_path):
  path, _, _ = write_manifest(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(prepare.TooManyBadRecords) as e:
    prepare.prepare('manifest', str(out), input=path, **_manifest_options(max_bad_fraction=0.05))
  message = str(e.value)
  assert '6 of 14 manifest inputs (42.9%)' in message
  assert 'max_bad_fraction=0.05' in message
  for reason in ('missing file: 1', 'truncated or corrupt image: 2', 'empty caption: 1'):
    assert reason in message
  assert_nothing_written(out)


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


def test_cli_reports_bad_data_and_missing_input_in_one_line(tmp_path):
  path, _, _ = write_manifest(tmp_path)
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--output={tmp_path / "out"}',
    f'--input={path}',
    '--image_column=path',
    '--caption_column=text',
  )
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert 'could not be converted' in result.stderr and 'missing file: 1' in result.stderr
  result = run_module('medclip_jax.data.prepare', '--format=roco', f'--output={tmp_path / "out"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert "format 'roco' needs --input" in result.stderr
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--output={tmp_path / "ok"}',
    f'--input={path}',
    '--image_column=path',
    '--caption_column=text',
    '--max_bad_fraction=0.6',
    f'--max_side={MAX_SIDE}',
  )
  assert result.returncode == 0, result.stderr
  assert '6 skipped' in result.stdout


def test_training_runs_on_a_prepared_manifest_with_messy_records(tmp_path, tiny_config):
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  path, _, _ = write_manifest(tmp_path)
  out = tmp_path / 'prepared'
  prepare.prepare(
    'manifest', str(out), input=path, **_manifest_options(val_fraction=0.0, test_fraction=0.0)
  )
  config = tiny_config()
  config.data.dir = str(out)
  # The tiny config's own 12 steps: its compiled step is shared with other tests.
  config.eval.split = 'train'  # everything is in train
  config.evals.zeroshot.templates = {'modality': ('{} scan.',)}
  config.evals.zeroshot.class_names = {}
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['retrieval.gallery_size'] == 8
  assert 'zeroshot.modality.top1' in results


def test_manifest_parquet_reads_like_csv(tmp_path):
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  options, good, bad = write_manifest_fixture(tmp_path)
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

  good, bad = good_images(), bad_images()
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
  recs = records_by_id(tmp_path / 'out')
  assert sorted(recs) == ['row 2', 'scan_a.png']
  assert Image.open(io.BytesIO(recs['row 2']['image'])).mode == 'RGB'  # CMYK converted
  assert recs['scan_a.png']['caption'] == 'Axial CT.'


def test_unpaired_rows_are_kept_as_training_records_of_their_kind_when_asked(tmp_path):
  images = tmp_path / 'img'
  rows = []
  for i in range(12):
    write(images, f'{i}.png', png(noise('L', seed=i)))
    # Every third row lacks its caption, every fourth its image; one patient throughout,
    # so that all of them fall in one split, the training one (test_fraction 0).
    caption = '' if i % 3 == 0 else f'CT of the chest, number {i}.'
    rows.append(['' if i % 4 == 1 else f'img/{i}.png', caption, 'p', 'CT'])
  rows.append(['', '', 'p', 'CT'])  # neither: skipped
  path = tmp_path / 'unpaired.csv'
  write_csv(path, ['path', 'text', 'patient', 'modality'], rows)
  options = _manifest_options(val_fraction=0.0, test_fraction=0.0, max_bad_fraction=1.0)
  plain = prepare.prepare('manifest', str(tmp_path / 'plain'), input=str(path), **options)
  assert set(plain['splits']) == set(records.SPLITS) and plain['splits']['train']['count'] == 6
  out = tmp_path / 'out'
  info = prepare.prepare('manifest', str(out), input=str(path), unpaired=True, **options)
  counts = {s: v['count'] for s, v in info['splits'].items() if v['count']}
  # Rows 1 and 5 lack an image (text-only), 0, 3 and 6 a caption (image-only), 2, 4, 7, 8,
  # 10 and 11 have both; row 9 and the last have neither.
  assert counts == {'train': 6, 'train_image_only': 3, 'train_text_only': 2}
  assert info['unpaired'] is True
  assert [s['reason'] for s in info['skipped']] == ['empty caption', 'empty caption']
  text_only = split_records_of(out, 'train_text_only')
  assert {r['kind'] for r in text_only} == {'text_only'}
  assert all(r['image'] == b'' and r['caption'] for r in text_only)
  image_only = split_records_of(out, 'train_image_only')
  assert all(
    r['caption'] == '' and r['image'] and r['labels'] == {'modality': 'CT'} for r in image_only
  )
  # Prepared again without them, the earlier unpaired shards go.
  prepare.prepare('manifest', str(out), input=str(path), **options)
  assert not list(out.glob('train_*_only.array_record-*'))
  # Split by row, unpaired records the split rule puts in val or test are left out (for
  # training only), and not counted as bad inputs.
  options.update(group_column='', val_fraction=0.3, test_fraction=0.3, max_bad_fraction=0.2)
  info = prepare.prepare('manifest', str(out), input=str(path), unpaired=True, **options)
  kept = sum(
    info['splits'].get(f'train_{k}', {'count': 0})['count'] for k in ('image_only', 'text_only')
  )
  assert kept + sum(info['unpaired_outside_train'].values()) == 5
  assert 0 < sum(info['unpaired_outside_train'].values()) < 5
  assert len(info['skipped']) == 2


def split_records_of(directory, split):
  return list(records.read_records(records.split_files(str(directory), split)))


def test_manifest_parquet_embedded_images_are_one_only_with_equal_name_and_bytes(tmp_path):
  import pyarrow  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # pylint: disable=import-outside-toplevel

  # Hugging Face datasets keeps only the base name: different images share one.
  first, second = png(noise('L', seed=1)), png(noise('L', seed=2))
  rows = [
    (first, 'view1_frontal.jpg', 'Report one.', 'p1'),
    (second, 'view1_frontal.jpg', 'Report two.', 'p2'),
    (first, 'view1_frontal.jpg', 'Report one again.', 'p1'),  # the first image again
    (second, 'other.jpg', 'Same bytes, another name.', 'p3'),
    (second, 'view1_frontal.jpg', 'Report two again.', 'p2'),  # the second image again
  ]
  table = pyarrow.table(
    {
      'image': [{'bytes': data, 'path': name} for data, name, _, _ in rows],
      'caption': [caption for _, _, caption, _ in rows],
      'patient': [patient for _, _, _, patient in rows],
    }
  )
  pyarrow.parquet.write_table(table, tmp_path / 'train.parquet')
  info = prepare.prepare(
    'manifest',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'train.parquet'),
    group_column='patient',
    max_side=MAX_SIDE,
  )
  assert info['skipped'] == []
  recs = records_by_id(tmp_path / 'out')
  assert {i: (r['group'], r.get('captions', [r['caption']])) for i, r in recs.items()} == {
    'view1_frontal.jpg': ('p1', ['Report one.', 'Report one again.']),
    'view1_frontal.jpg (row 2)': ('p2', ['Report two.', 'Report two again.']),
    'other.jpg': ('p3', ['Same bytes, another name.']),
  }
  assert recs['view1_frontal.jpg']['image'] == first
  assert recs['view1_frontal.jpg (row 2)']['image'] == second


def test_manifest_caption_cells_may_be_lists_numbers_or_blank(tmp_path):
  for i in range(5):
    write(tmp_path, f'{i}.png', png(noise('L', seed=i)))
  captions = [['First caption.', 'Second caption.'], 0, float('nan'), None, {'en': 'x'}]
  rows = [{'image': f'{i}.png', 'caption': c} for i, c in enumerate(captions)]
  (tmp_path / 'm.json').write_text(json.dumps(rows))  # NaN as JSON's NaN, as pandas writes it
  info = prepare.prepare(
    'manifest',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'm.json'),
    max_side=MAX_SIDE,
    max_bad_fraction=1,
  )
  assert info['skipped'] == [
    {'id': '2.png', 'reason': 'empty caption'},
    {'id': '3.png', 'reason': 'empty caption'},
    {'id': '4.png', 'reason': 'caption is a dict, not text'},
  ]
  recs = records_by_id(tmp_path / 'out')
  assert recs['0.png']['captions'] == ['First caption.', 'Second caption.']
  assert recs['1.png']['caption'] == '0' and 'captions' not in recs['1.png']


def test_manifest_refuses_label_columns_with_a_dot(tmp_path):
  write(tmp_path, 'a.png', png(noise('L')))
  write_csv(tmp_path / 'm.csv', ['image', 'caption', 'finding.type'], [['a.png', 'CT.', 'mass']])
  with pytest.raises(prepare.OptionError, match=r"--label_columns: 'finding\.type' cannot be"):
    prepare.prepare(
      'manifest', str(tmp_path / 'out'), input=str(tmp_path / 'm.csv'), label_columns='finding.type'
    )
  assert not (tmp_path / 'out').exists()


def test_manifest_rows_may_name_dicom_files(tmp_path):
  write_dicom_fixture(str(tmp_path / 'dicom'))
  write_csv(
    tmp_path / 'm.csv',
    ['image', 'caption'],
    [['dicom/p1/mono1.dcm', 'A radiograph.'], ['dicom/p2/rgb.dcm', 'An ultrasound.']],
  )
  info = prepare.prepare(
    'manifest', str(tmp_path / 'out'), input=str(tmp_path / 'm.csv'), max_side=MAX_SIDE
  )
  assert info['converted'] == 2 and info['skipped'] == []
  converted = records_by_id(tmp_path / 'out')
  for name, mode in (('dicom/p1/mono1.dcm', 'L'), ('dicom/p2/rgb.dcm', 'RGB')):
    assert Image.open(io.BytesIO(converted[name]['image'])).mode == mode


def _three_images(directory):
  for i in range(3):
    write(directory / 'imgs', f'{i}.png', png(noise('L', seed=i)))


def test_a_csv_row_with_an_unquoted_comma_is_skipped_and_counted_not_read_shifted(tmp_path):
  _three_images(tmp_path)
  (tmp_path / 'm.csv').write_text(
    'image,caption,modality\n'
    'imgs/0.png,Axial CT, contrast enhanced,CT\n'
    'imgs/1.png,Normal chest,XR\n'
    'imgs/2.png,Brain MRI,MR\n'
  )
  options = dict(input=str(tmp_path / 'm.csv'), label_columns='modality', max_side=MAX_SIDE)
  out = tmp_path / 'out'
  with pytest.raises(prepare.TooManyBadRecords, match=r"more cells than the header .*'row 1'"):
    prepare.prepare('manifest', str(out), **options)
  assert_nothing_written(out)
  info = prepare.prepare('manifest', str(out), **options, max_bad_fraction=0.5)
  assert info['converted'] == 2 and [s['id'] for s in info['skipped']] == ['row 1']
  assert info['labels'] == {'modality': ['MR', 'XR']}


def test_rows_naming_one_file_in_different_ways_are_one_record(tmp_path):
  _three_images(tmp_path)
  write_csv(
    tmp_path / 'm.csv',
    ['image', 'caption'],
    [
      ['imgs/0.png', 'First.'],
      ['./imgs/0.png', 'Second.'],
      [str(tmp_path / 'imgs' / '0.png'), 'Third.'],
      ['imgs\\0.png', 'Fourth, from a table written on Windows.'],
      ['imgs\\1.png', 'Another image.'],
    ],
  )
  info = prepare.prepare(
    'manifest', str(tmp_path / 'out'), input=str(tmp_path / 'm.csv'), max_side=MAX_SIDE
  )
  assert info['converted'] == 2 and info['skipped'] == []
  recs = records_by_id(tmp_path / 'out')
  assert recs['imgs/0.png']['captions'] == [
    'First.',
    'Second.',
    'Third.',
    'Fourth, from a table written on Windows.',
  ]
  assert recs['imgs\\1.png']['caption'] == 'Another image.'


def test_rows_of_one_image_that_disagree_on_labels_or_group_are_reported(tmp_path):
  _three_images(tmp_path)
  write_csv(
    tmp_path / 'm.csv',
    ['image', 'caption', 'finding', 'patient'],
    [
      ['imgs/0.png', 'Nodule.', 'nodule', 'P1'],
      ['imgs/0.png', 'Effusion.', 'effusion', 'P1'],
      ['imgs/1.png', 'Normal.', 'normal', 'P2'],
      ['imgs/1.png', 'Normal again.', 'normal', 'P2'],
      ['imgs/2.png', 'Normal.', 'normal', 'P3'],
      ['imgs/2.png', 'Normal.', 'normal', 'P4'],
    ],
  )
  out = tmp_path / 'out'
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--input={tmp_path / "m.csv"}',
    f'--output={out}',
    '--label_columns=finding',
    '--group_column=patient',
    f'--max_side={MAX_SIDE}',
  )
  assert result.returncode == 0, result.stderr
  warning = (
    "2 image(s) have rows that disagree on their labels or group (e.g. 'imgs/0.png', "
    "'imgs/2.png'): each record took them from its first row."
  )
  assert f'warning: {warning}' in result.stdout
  info = records.read_dataset_info(str(out))
  assert info['warnings'] == [warning]
  assert records_by_id(out)['imgs/0.png']['labels'] == {'finding': 'nodule'}


def test_blank_cells_of_a_json_table_are_no_label_and_no_group(tmp_path):
  _three_images(tmp_path)
  # pandas' DataFrame.to_json writes null, but json.dump of its records writes NaN.
  (tmp_path / 'm.json').write_text(
    '[{"image": "imgs/0.png", "caption": "A.", "finding": NaN, "patient": NaN},'
    ' {"image": "imgs/1.png", "caption": "B.", "finding": "nodule", "patient": 1001.0},'
    ' {"image": "imgs/2.png", "caption": "C.", "finding": NaN, "patient": NaN}]'
  )
  prepare.prepare(
    'manifest',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'm.json'),
    label_columns='finding',
    group_column='patient',
    max_side=MAX_SIDE,
  )
  recs = records_by_id(tmp_path / 'out')
  assert {i: (r['labels'], r['group']) for i, r in recs.items()} == {
    'imgs/0.png': ({}, 'imgs/0.png'),
    'imgs/1.png': ({'finding': 'nodule'}, '1001'),
    'imgs/2.png': ({}, 'imgs/2.png'),
  }


def test_missing_images_say_where_relative_paths_are_read_from(tmp_path):
  (tmp_path / 'tables').mkdir()
  write_csv(tmp_path / 'tables' / 'm.csv', ['image', 'caption'], [['imgs/0.png', 'A.']])
  with pytest.raises(prepare.TooManyBadRecords, match='relative to its folder, ') as e:
    prepare.prepare('manifest', str(tmp_path / 'out'), input=str(tmp_path / 'tables' / 'm.csv'))
  assert str(tmp_path / 'tables') in str(e.value)
