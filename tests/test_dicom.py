"""Tests of the dicom format: the real files of pydicom-data and a synthetic fixture.

`write_dicom_fixture` is also used by other tests (e.g. training on every
format): it writes a small DICOM tree with good and bad files and returns
what prepare must make of it.
"""

import collections
import csv
import io
import logging
import os
import re
import subprocess
import sys
import types
import warnings

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue

from medclip_jax.data import prepare
from medclip_jax.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SIDE = 64
SIZE = 32

# Identifying values planted in the fixture: none may reach the output.
_PATIENTS = {
  'p1': {
    'PatientName': 'Wojcik^Zofia',
    'PatientID': 'MRN-8675309',
    'PatientBirthDate': '19640229',
    'PatientAddress': '221B Baker Street, London',
    'OtherPatientIDs': 'ALT-55501',
    'ReferringPhysicianName': 'Okonkwo^Chidi',
  },
  'p2': {
    'PatientName': 'Haraldsen^Ingrid^Marie',
    'PatientID': 'MRN-4417702',
    'PatientBirthDate': '19580817',
    'PatientAddress': '12 Rue des Lilas, Lyon',
    'ReferringPhysicianName': 'Castellanos^Beatriz',
  },
  'p3': {
    'PatientName': 'Nakamura^Hiroshi',
    'PatientID': 'MRN-3090517',
    'PatientBirthDate': '19810102',
  },
  # No PatientID: grouped by StudyInstanceUID.
  'p4': {'PatientName': 'Abernathy^Quentin', 'PatientBirthDate': '19770505'},
}
_OTHER_PHI = {
  'InstitutionName': 'Saint Elsewhere General',
  'AccessionNumber': 'ACC-77123',
}
_REASONS = {
  'misc/burned_in.dcm': 'burned-in annotation (may show PHI)',
  'misc/empty.dcm': 'empty file',
  'misc/mpeg2.dcm': 'unsupported transfer syntax',
  'misc/notes.txt': 'not a DICOM file',
  'misc/untagged.dcm': 'no caption (no describing tags, not in --captions)',
  'p1/truncated.dcm': 'truncated or corrupt DICOM',
  'p2/report.dcm': 'no pixel data',
}


def _phi_strings(values):
  """The identifying strings to look for: values, names with spaces, name parts."""
  found = set()
  for value in values:
    found.add(value)
    found.add(value.replace('^', ' ').strip())
    found.update(re.split(r'[\^\s]+', value))
  return {s for s in found if len(s) >= 5}


FIXTURE_PHI = _phi_strings(
  [v for p in _PATIENTS.values() for v in p.values()] + list(_OTHER_PHI.values())
)


def _dataset(patient, pixels, photometric, bits=None, sop_class=uid.SecondaryCaptureImageStorage):
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds.SOPClassUID = sop_class
  ds.StudyInstanceUID = uid.generate_uid(entropy_srcs=[patient, 'study'])
  ds.SeriesInstanceUID = uid.generate_uid()
  for keyword, value in {**_PATIENTS.get(patient, {}), **_OTHER_PHI}.items():
    setattr(ds, keyword, value)
  if pixels is not None:
    ds.set_pixel_data(pixels, photometric, bits or 8 * pixels.dtype.itemsize)
  else:
    ds.SOPInstanceUID = uid.generate_uid()
  ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
  return ds


def _tagged(ds, **tags):
  for keyword, value in tags.items():
    setattr(ds, keyword, value)
  return ds


def _file_bytes(ds, **options):
  out = io.BytesIO()
  ds.save_as(out, **options)
  return out.getvalue()


def _ramp(dtype, low, high):
  """Raw values increasing left to right."""
  return np.tile(np.linspace(low, high, SIZE), (SIZE, 1)).astype(dtype)


# The CT file's bands of 4 columns, in Hounsfield units, and their expected
# grey values under its window (center 50, width 100: 0 HU black, 100 HU white).
CT_BANDS = [-1000, 0, 20, 50, 80, 100, 1000, 3000]
CT_EXPECTED = [0, 0, 51, 128, 204, 255, 255, 255]
FRAMES = 5  # the multi-frame file: frame k is black with a bright block at columns 6k..6k+3


def _good_files():
  """Path relative to the fixture -> file bytes, for the files that convert."""
  hu = np.repeat(np.array(CT_BANDS), SIZE // len(CT_BANDS))
  stored = np.tile((hu + 1000) // 2, (SIZE, 1)).astype(np.int16)  # slope 2, intercept -1000
  ct = _tagged(
    _dataset('p1', stored, 'MONOCHROME2', sop_class=uid.CTImageStorage),
    Modality='CT',
    BodyPartExamined='HEAD',
    StudyDescription='CT head',
    SeriesDescription='Axial for Wojcik',  # quotes the patient's name: left out
    RescaleSlope=2,
    RescaleIntercept=-1000,
    WindowCenter=50,
    WindowWidth=100,
  )
  cr = _tagged(
    _dataset('p1', _ramp(np.uint16, 100, 4000), 'MONOCHROME1', bits=12),
    Modality='CR',
    BodyPartExamined='CHEST',
  )
  rle = _tagged(_dataset('p1', _ramp(np.uint16, 0, 1000), 'MONOCHROME2', bits=12), Modality='MR')
  rle.compress(uid.RLELossless)
  frames = np.zeros((FRAMES, SIZE, SIZE), np.uint8)
  for k in range(FRAMES):
    frames[k, :, 6 * k : 6 * k + 4] = 200
  multiframe = _tagged(
    _dataset('p2', frames, 'MONOCHROME2'),
    Modality='US',
    SeriesDescription='Cine loop',
  )
  # A name typed into a describing tag: left out of the caption and labels.
  multiframe.add(DataElement(0x00180015, 'CS', 'Haraldsen', validation_mode=pydicom.config.IGNORE))
  rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
  rgb[:, : SIZE // 2] = (255, 0, 0)
  rgb[:, SIZE // 2 :] = (0, 0, 255)
  color = _tagged(_dataset('p2', rgb, 'RGB'), Modality='US', BodyPartExamined='ABDOMEN')
  mono2 = _tagged(_dataset('p3', _ramp(np.uint8, 0, 255), 'MONOCHROME2'), Modality='DX')
  bare = _tagged(
    _dataset('p3', _ramp(np.uint8, 10, 90), 'MONOCHROME2'), Modality='CT', StudyDescription='Sinus'
  )
  del bare.file_meta  # an old file: no preamble, no file meta, implicit VR
  knee = [
    _tagged(
      _dataset('p4', _ramp(np.uint16, i, 500 + i), 'MONOCHROME2', bits=16),
      Modality='MR',
      BodyPartExamined='KNEE',
    )
    for i in range(2)
  ]
  return {
    'p1/ct_window.dcm': _file_bytes(ct, enforce_file_format=True),
    'p1/mono1.dcm': _file_bytes(cr, enforce_file_format=True),
    'p1/rle.dcm': _file_bytes(rle, enforce_file_format=True),
    'p2/multiframe.dcm': _file_bytes(multiframe, enforce_file_format=True),
    'p2/rgb.dcm': _file_bytes(color, enforce_file_format=True),
    'p3/mono2.dcm': _file_bytes(mono2, enforce_file_format=True),
    'p3/no_preamble.dcm': _file_bytes(bare, implicit_vr=True, little_endian=True),
    'p4/knee_a.dcm': _file_bytes(knee[0], enforce_file_format=True),
    'p4/knee_b.dcm': _file_bytes(knee[1], enforce_file_format=True),
  }


def _bad_files(good):
  """Path relative to the fixture -> file bytes, for the files skipped (see _REASONS)."""
  image = _ramp(np.uint8, 0, 255)
  burned_in = _tagged(_dataset('p2', image, 'MONOCHROME2'), Modality='US', BurnedInAnnotation='YES')
  mpeg2 = _tagged(_dataset('p3', image, 'MONOCHROME2'), Modality='US')
  mpeg2.file_meta.TransferSyntaxUID = uid.MPEG2MPML
  mpeg2.PixelData = pydicom.encaps.encapsulate([b'\0' * 64])
  mpeg2['PixelData'].VR = 'OB'
  mpeg2['PixelData'].is_undefined_length = True
  report = _tagged(
    _dataset('p2', None, '', sop_class=uid.BasicTextSRStorage),
    Modality='SR',
    StudyDescription='Report for Haraldsen',
  )
  untagged = _dataset('p3', image, 'MONOCHROME2')
  truncated = good['p1/ct_window.dcm']
  return {
    'misc/burned_in.dcm': _file_bytes(burned_in, enforce_file_format=True),
    'misc/empty.dcm': b'',
    'misc/mpeg2.dcm': _file_bytes(mpeg2, enforce_file_format=True),
    'misc/notes.txt': b'Wojcik^Zofia MRN-8675309: call back on Monday.\n',
    'misc/untagged.dcm': _file_bytes(untagged, enforce_file_format=True),
    'p1/truncated.dcm': truncated[: len(truncated) * 3 // 4],
    'p2/report.dcm': _file_bytes(report, enforce_file_format=True),
  }


def write_dicom_fixture(directory, captions=None):
  """Writes a small DICOM tree into `directory` for `--format=dicom --input=directory`.

  Four patients (folders p1..p4), 9 convertible files: a 16-bit CT with
  rescale and window, MONOCHROME1, RLE-compressed, 5-frame, RGB, 8-bit,
  without preamble and file meta, and two of a patient without PatientID;
  plus 7 files that are skipped (one of every kind), so prepare needs
  max_bad_fraction >= 0.5. Identifying values (FIXTURE_PHI) are planted in
  the tags of every file. If `captions` is a path, a side captions CSV is
  written there (two rows match, one has an empty caption, one names a
  missing file). Captions never change which files convert.

  Returns (the ids that convert, sorted; {skipped id: reason}).
  """
  good = _good_files()
  files = {**good, **_bad_files(good)}
  for name, data in files.items():
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)
  if captions:
    with open(captions, 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['file', 'caption'])
      writer.writerow(['p1/mono1.dcm', 'Frontal chest radiograph.'])
      writer.writerow(['p2/rgb.dcm', ' '])  # empty: the caption comes from the tags
      writer.writerow(['p3\\mono2.dcm', 'A  caption from\tthe side file.'])
      writer.writerow(['gone/missing.dcm', 'Not in the input.'])
  return sorted(good), dict(_REASONS)


def _records(directory):
  return {
    split: list(records.read_records(records.split_files(str(directory), split)))
    for split in records.SPLITS
  }


def _image(record):
  return Image.open(io.BytesIO(record['image']))


def _output_texts(directory):
  """Every text and byte string of a prepared dataset, for PHI checks."""
  texts = []
  for recs in _records(directory).values():
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
  good, bad = write_dicom_fixture(str(data), str(captions))
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
  assert info['captions'] == {'file': str(captions), 'matched': 2}
  assert info['labels'] == {
    'body_part': ['abdomen', 'chest', 'head', 'knee'],
    'modality': ['CR', 'CT', 'DX', 'MR', 'US'],
  }
  by_split = _records(out)
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
  assert ct[0, :: SIZE // len(CT_BANDS)].tolist() == CT_EXPECTED  # rescale, then window
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
  good, bad = write_dicom_fixture(str(tmp_path / 'dicom'))
  info = prepare.prepare(
    'dicom',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'dicom'),
    max_side=MAX_SIDE,
    max_bad_fraction=0.5,
  )
  assert info['converted'] == len(good) and len(info['skipped']) == len(bad)
  assert info['captions'] == {'file': '', 'matched': 0}
  recs = {r['id']: r for rs in _records(tmp_path / 'out').values() for r in rs}
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
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'medclip_jax.data.prepare',
      '--format=dicom',
      f'--input={data}',
      f'--output={out}',
      f'--max_side={MAX_SIDE}',
      '--num_shards=1',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert not result.stderr.strip()  # not a warning or traceback for the bad file
  info = records.read_dataset_info(str(out))
  assert info['converted'] + len(info['skipped']) == len(names)
  assert info['converted'] >= 0.9 * len(names)
  assert info['converted'] == 65 and info['skipped'] == PYDICOM_DATA_SKIPPED
  recs = [r for rs in _records(out).values() for r in rs]
  assert sorted(r['id'] for r in recs) == sorted(
    set(names) - {s['id'] for s in PYDICOM_DATA_SKIPPED}
  )
  for rec in recs:
    image = _image(rec)
    assert image.mode in ('L', 'RGB') and max(image.size) <= MAX_SIDE, rec['id']

  values = _identifying_values(data)
  phi = _phi_strings(values)
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
