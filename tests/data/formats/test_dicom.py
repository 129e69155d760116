"""Tests of the dicom format: the synthetic fixture (tests.helpers.write_dicom_fixture:
pixels, captions, groups, no identifying value in the output), options, a missing decoder,
and the real files of pydicom-data."""

import collections
import io
import logging
import os
import types
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.multival import MultiValue

from medclip_jax.data import prepare
from medclip_jax.data import records
from tests.helpers import CT_BANDS
from tests.helpers import CT_EXPECTED
from tests.helpers import DICOM_SIZE
from tests.helpers import FIXTURE_PHI
from tests.helpers import FRAMES
from tests.helpers import MAX_SIDE
from tests.helpers import all_records
from tests.helpers import records_by_id
from tests.helpers import phi_strings
from tests.helpers import run_module
from tests.helpers import write_dicom_fixture


def _image(record):
  return Image.open(io.BytesIO(record['image']))


def _output_texts(directory):
  """Every text and byte string of a prepared dataset, for PHI checks."""
  texts = []
  for recs in all_records(directory).values():
    for rec in recs:
      texts += [rec['id'], rec['group'], rec['caption'], *rec['labels'], *rec['labels'].values()]
  with open(os.path.join(directory, records.DATASET_INFO), encoding='utf-8') as f:
    texts.append(f.read())
  shards = []
  for name in sorted(os.listdir(directory)):
    if 'array_record' in name:
      with open(os.path.join(directory, name), 'rb') as f:
        shards.append(f.read())
  return texts, b''.join(shards)


def _assert_no_phi(phi, texts, shards):
  for value in sorted(phi):
    assert not [t for t in texts if value in t], value
    assert value.encode('utf-8') not in shards, value


# ----------------------------------------------------------------------------
# The synthetic fixture.


def test_fixture_converts_good_files_and_reports_bad_ones(tmp_path, caplog, capsys):
  data = tmp_path / 'dicom'
  # The captions file lies inside --input: it is not an input itself.
  captions = data / 'captions.csv'
  os.makedirs(data)
  _, good, bad = write_dicom_fixture(str(data), str(captions))
  out = tmp_path / 'out'
  caplog.set_level(logging.DEBUG)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    info = prepare.prepare(
      'dicom',
      str(out),
      num_shards=1,
      input=str(data),
      captions=str(captions),
      seed=3,
      val_fraction=0.3,
      test_fraction=0.3,
      max_side=MAX_SIDE,
      max_bad_fraction=0.5,
    )
  assert info == records.read_dataset_info(str(out))
  assert info['converted'] == len(good) == 9
  assert {s['id']: s['reason'] for s in info['skipped']} == bad
  assert len(info['skipped']) == len(bad) == 7
  assert sum(s['count'] for s in info['splits'].values()) == info['converted']
  assert info['captions'] == {
    'file': str(captions),
    'matched': 2,
    'unmatched': ['gone/missing.dcm'],
  }
  assert info['warnings'] == [
    "--captions: 1 of its 4 file paths name no file under --input (e.g. 'gone/missing.dcm'; "
    'all listed in dataset_info.json): the files they were meant for, if any, are captioned '
    'from their tags. Paths are case-sensitive.'
  ]
  assert info['labels'] == {
    'body_part': ['abdomen', 'chest', 'head', 'knee'],
    'modality': ['CR', 'CT', 'DX', 'MR', 'US'],
  }
  by_split = all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  recs = {r['id']: r for split in by_split.values() for r in split}
  assert sorted(recs) == good

  # One group per patient (folder), each in a single split.
  groups = collections.defaultdict(set)
  splits = collections.defaultdict(set)
  for split, split_recs in by_split.items():
    for rec in split_recs:
      groups[rec['id'].split('/')[0]].add(rec['group'])
      splits[rec['group']].add(split)
  assert all(len(g) == 1 for g in groups.values()) and len(groups) == 4
  assert all(len(s) == 1 for s in splits.values())
  assert {p: next(iter(g)).split('-')[0] for p, g in groups.items()} == {
    'p1': 'patient',
    'p2': 'patient',
    'p3': 'patient',
    'p4': 'study',
  }
  assert len({s for v in splits.values() for s in v}) > 1

  # Captions: the side file where it has one, else from the tags.
  captions_of = {i: r['caption'] for i, r in recs.items()}
  assert captions_of['p1/mono1.dcm'] == 'Frontal chest radiograph.'
  assert captions_of['p3/mono2.dcm'] == 'A caption from the side file.'
  assert captions_of['p2/rgb.dcm'] == 'Ultrasound image of the abdomen.'
  assert captions_of['p1/ct_window.dcm'] == 'CT scan of the head. Study: CT head.'
  assert captions_of['p2/multiframe.dcm'] == 'Ultrasound image. Series: Cine loop.'
  assert captions_of['p3/no_preamble.dcm'] == 'CT scan. Study: Sinus.'
  assert captions_of['p4/knee_a.dcm'] == 'MRI scan of the knee.'
  assert recs['p1/ct_window.dcm']['labels'] == {'modality': 'CT', 'body_part': 'head'}
  assert recs['p2/multiframe.dcm']['labels'] == {'modality': 'US'}

  # Pixels.
  for rec in recs.values():
    image = _image(rec)
    assert image.format == 'PNG' and max(image.size) <= MAX_SIDE
    assert image.mode == ('RGB' if rec['id'] == 'p2/rgb.dcm' else 'L'), rec['id']
  ct = np.asarray(_image(recs['p1/ct_window.dcm']))
  assert ct[0, :: DICOM_SIZE // len(CT_BANDS)].tolist() == CT_EXPECTED  # rescale, then window
  mono1 = np.asarray(_image(recs['p1/mono1.dcm']), np.float32)
  assert mono1[:, 0].mean() == 255 and mono1[:, -1].mean() == 0  # raw values rise: inverted
  mono2 = np.asarray(_image(recs['p3/mono2.dcm']), np.float32)
  assert mono2[:, 0].mean() == 0 and mono2[:, -1].mean() == 255
  frame = np.asarray(_image(recs['p2/multiframe.dcm']))
  middle = FRAMES // 2
  assert np.flatnonzero(frame[0]).tolist() == list(range(6 * middle, 6 * middle + 4))
  assert frame[:, 6 * middle].min() == 255
  rgb = np.asarray(_image(recs['p2/rgb.dcm']))
  assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, -1].tolist() == [0, 0, 255]
  rle = np.asarray(_image(recs['p1/rle.dcm']), np.float32)
  assert rle[0, 0] == 0 and rle[0, -1] == 255 and np.all(np.diff(rle[0]) >= 0)

  # No identifying value anywhere: records, shards, info, warnings, logs, output.
  texts, shards = _output_texts(out)
  texts += [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
  texts += list(capsys.readouterr())
  _assert_no_phi(FIXTURE_PHI, texts, shards)


def test_fixture_without_captions_and_with_limit(tmp_path):
  _, good, bad = write_dicom_fixture(str(tmp_path / 'dicom'))
  info = prepare.prepare(
    'dicom',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'dicom'),
    max_side=MAX_SIDE,
    max_bad_fraction=0.5,
  )
  assert info['converted'] == len(good) and len(info['skipped']) == len(bad)
  assert info['captions'] == {'file': '', 'matched': 0}
  recs = records_by_id(tmp_path / 'out')
  assert recs['p1/mono1.dcm']['caption'] == 'X-ray of the chest.'
  # The first 4 files in path order: misc/burned_in, empty, mpeg2, notes.txt.
  with pytest.raises(prepare.TooManyBadRecords, match='4 of 4 dicom inputs'):
    prepare.prepare(
      'dicom', str(tmp_path / 'few'), input=str(tmp_path / 'dicom'), limit=4, max_side=MAX_SIDE
    )


def test_missing_decoder_is_reported(tmp_path, monkeypatch):
  write_dicom_fixture(str(tmp_path / 'dicom'))
  get_decoder = pydicom.pixels.get_decoder

  def without_plugins(transfer_syntax):
    if transfer_syntax.is_compressed:
      return types.SimpleNamespace(is_available=False)
    return get_decoder(transfer_syntax)

  monkeypatch.setattr(pydicom.pixels, 'get_decoder', without_plugins)
  info = prepare.prepare(
    'dicom', str(tmp_path / 'out'), input=str(tmp_path / 'dicom'), max_bad_fraction=0.6
  )
  reasons = {s['id']: s['reason'] for s in info['skipped']}
  assert reasons['p1/rle.dcm'] == (
    'cannot decode RLE Lossless (install pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, '
    'pylibjpeg-rle)'
  )


def test_bad_options_are_reported(tmp_path):
  write_dicom_fixture(str(tmp_path / 'dicom'))
  out = str(tmp_path / 'out')
  with pytest.raises(prepare.OptionError, match="format 'dicom' needs --input"):
    prepare.prepare('dicom', out)
  with pytest.raises(prepare.OptionError, match='must be a directory'):
    prepare.prepare('dicom', out, input=str(tmp_path / 'dicom' / 'p1' / 'rle.dcm'))
  with pytest.raises(prepare.OptionError, match='is not a file'):
    prepare.prepare('dicom', out, input=str(tmp_path / 'dicom'), captions=str(tmp_path / 'x.csv'))
  (tmp_path / 'bad.csv').write_text('path,text\np1/rle.dcm,hi\n')
  with pytest.raises(prepare.OptionError, match="needs the columns file .* 'path', 'text'"):
    prepare.prepare('dicom', out, input=str(tmp_path / 'dicom'), captions=str(tmp_path / 'bad.csv'))


def test_captions_paths_may_be_absolute_or_start_with_the_input_folder_but_must_match(tmp_path):
  data = tmp_path / 'dicom'
  write_dicom_fixture(str(data))
  given = tmp_path / 'given.csv'
  given.write_text(
    f'file,caption\n{data / "p1" / "mono1.dcm"},Absolute.\ndicom/p3/mono2.dcm,Prefixed.\n'
  )
  out = tmp_path / 'out'
  options = dict(input=str(data), max_side=MAX_SIDE, max_bad_fraction=0.5)
  info = prepare.prepare('dicom', str(out), **options, captions=str(given))
  assert info['captions']['matched'] == 2
  captions_of = {i: r['caption'] for i, r in records_by_id(str(out)).items()}
  assert (captions_of['p1/mono1.dcm'], captions_of['p3/mono2.dcm']) == ('Absolute.', 'Prefixed.')
  # Relative to another folder: every file would silently fall back to its tags' caption.
  given.write_text('file,caption\nscans/p1/mono1.dcm,Nowhere.\n')
  with pytest.raises(prepare.OptionError, match='none of its 1 file paths names a file under'):
    prepare.prepare('dicom', str(tmp_path / 'out2'), input=str(data), captions=str(given))


def test_file_names_that_are_not_utf8_and_an_output_inside_the_input_prepare_again(tmp_path):
  data = tmp_path / 'dicom'
  write_dicom_fixture(str(data))
  # Names from a Latin-1 file system: a folder, an image and a note beside them.
  latin = os.fsencode(data) + b'/r\xe9sultats'
  os.makedirs(latin)
  with open(data / 'p1' / 'mono1.dcm', 'rb') as f:
    image = f.read()
  with open(latin + b'/caf\xe9.dcm', 'wb') as f:
    f.write(image)
  with open(latin + b'/Lisez-moi \xe9t\xe9.txt', 'wb') as f:
    f.write(b'notes')
  out = data / 'prepared'  # inside --input: the second run must not read the first's output
  options = dict(input=str(data), max_side=MAX_SIDE, max_bad_fraction=0.6)
  first = prepare.prepare('dicom', str(out), **options)
  second = prepare.prepare('dicom', str(out), **options)
  assert first == second == records.read_dataset_info(str(out))
  assert 'r\ufffdsultats/caf\ufffd.dcm' in records_by_id(str(out))
  assert {'id': 'r\ufffdsultats/Lisez-moi \ufffdt\ufffd.txt', 'reason': 'not a DICOM file'} in (
    second['skipped']
  )


# ----------------------------------------------------------------------------
# pydicom-data: the real test files pydicom ships on PyPI.

# With pylibjpeg and its plugins every file decodes but one, whose
# encapsulated pixel data is cut short; the two segmentations decode but are
# not pictures to train on.
PYDICOM_DATA_SKIPPED = [
  {'id': 'emri_small_jpeg_2k_lossless_too_short.dcm', 'reason': 'truncated or corrupt DICOM'},
  {'id': 'liver.dcm', 'reason': 'not a picture (SEG: segmentation)'},
  {'id': 'liver_expb.dcm', 'reason': 'not a picture (SEG: segmentation)'},
]
# Identifying tags whose values must not reach the output.
IDENTIFYING = (
  'PatientName',
  'PatientID',
  'PatientBirthDate',
  'PatientAddress',
  'OtherPatientIDs',
  'ReferringPhysicianName',
)


def _pydicom_data():
  """The folder of pydicom-data's files (installed, never downloaded)."""
  import data_store  # pylint: disable=import-outside-toplevel  # pydicom-data's package

  return str(data_store.DataStore().data_path)


def _identifying_values(directory):
  values = []
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for name in sorted(os.listdir(directory)):
      ds = pydicom.dcmread(os.path.join(directory, name), force=True)
      for keyword in IDENTIFYING:
        value = ds.get(keyword)
        for v in value if isinstance(value, MultiValue) else [value]:
          if v is not None and str(v).strip():
            values.append(str(v).strip())
  return values


def test_pydicom_data_converts_and_leaks_no_phi(tmp_path):
  data = _pydicom_data()
  names = sorted(os.listdir(data))
  assert len(names) == 68
  out = tmp_path / 'out'
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=dicom',
    f'--input={data}',
    f'--output={out}',
    f'--max_side={MAX_SIDE}',
    '--num_shards=1',
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert not result.stderr.strip()  # not a warning or traceback for the bad file
  info = records.read_dataset_info(str(out))
  assert info['converted'] + len(info['skipped']) == len(names)
  assert info['converted'] >= 0.9 * len(names)
  assert info['converted'] == 65 and info['skipped'] == PYDICOM_DATA_SKIPPED
  recs = [r for rs in all_records(out).values() for r in rs]
  assert sorted(r['id'] for r in recs) == sorted(
    set(names) - {s['id'] for s in PYDICOM_DATA_SKIPPED}
  )
  for rec in recs:
    image = _image(rec)
    assert image.mode in ('L', 'RGB') and max(image.size) <= MAX_SIDE, rec['id']

  values = _identifying_values(data)
  phi = phi_strings(values)
  # Values and name parts under 5 characters are not looked for: short IDs and
  # codes would match by accident (in PNG bytes, say), and parts such as 'G'
  # (of 'Lestrade^G') or 'LUT' (of 'VOI^LUT^Test') are not identifying.
  assert {v for v in values if len(v.replace('^', ' ').strip()) < 5} == {
    '0010',
    '204',
    '5MR2',
    '8NM1',
    '9RG1',
    'ID1',
    'PLA',
    'ward',
    'OB^^^^',
  }
  assert len(phi) > 40
  texts, shards = _output_texts(out)
  _assert_no_phi(phi, texts + [result.stdout, result.stderr], shards)
