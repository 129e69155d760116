"""Builders shared by the tests: the one module test modules import from.

Subprocess runners; image and file builders; record readers; the pipeline's
data config; DICOM datasets; one messy fixture per real format; and the
small inputs the tower tests share. Each
`write_*_fixture` fills a directory and returns (prepare options, expected
ids of the converted records, expected {id: reason} of the skipped inputs).
The manifest, MedPix and ROCO fixtures each hold images of every PIL mode
and a huge one, a group with several images, and each kind of bad input:
missing, zero-byte, non-image and truncated files, a blank caption, invalid
UTF-8 (repaired, so converted), a caption longer than any text tower takes
and a repeated image: a duplicate id (MedPix), a second caption of the same
image (manifest).
"""

import collections
import csv
import io
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pydicom
import pydicom.encaps
from PIL import Image
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset

from configs import demo
from medclip_jax import sharding
from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.training import setup
from medclip_jax.training import state as state_lib
from medclip_jax.training import step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SIDE = 64
LONG_CAPTION = 'The lesion is large. ' * 200  # ~1,000 tokens
BAD_UTF8 = b'bad \xff\xfe bytes'
# The fixtures are half bad on purpose; seed 18 puts groups of each fixture
# in all three splits.
OPTIONS = dict(
  max_side=MAX_SIDE, seed=18, val_fraction=0.25, test_fraction=0.25, max_bad_fraction=0.6
)

# ----------------------------------------------------------------------------
# Subprocesses


def run_module(module, *args, timeout=120, env=None):
  """`python -m module *args` from the repository root, its output captured as text."""
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def start_main(args, log_path, env=None, code=None, **kwargs):
  """Starts `python -m medclip_jax.main *args` on CPU, stdout and stderr going to
  `log_path`; with `code`, `python -c code *args` instead (a trainer with something planted)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  command = ['-c', code] if code else ['-m', 'medclip_jax.main']
  with open(log_path, 'w', encoding='utf-8') as log:
    return subprocess.Popen(
      [sys.executable, *command, *args],
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
      **kwargs,
    )


def wait_until(condition, processes, log_paths, timeout=240):
  """Polls `condition()` until it holds; fails with the logs if a process ends first."""
  deadline = time.time() + timeout
  while not condition():
    for proc, log in zip(processes, log_paths):
      assert proc.poll() is None, open(log, encoding='utf-8').read()
    assert time.time() < deadline, 'timed out: ' + open(log_paths[0], encoding='utf-8').read()
    time.sleep(0.05)


def training_rows(workdir):
  """{step: row} of the training rows (those with a loss key) of WORKDIR/metrics.jsonl;
  fails if a step has two rows."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')[:-1]  # a line still being written has no newline yet
  rows = [r for r in map(json.loads, lines) if 'loss' in r]
  steps = [r['step'] for r in rows]
  assert len(steps) == len(set(steps)), f'steps logged twice: {steps}'
  return {r['step']: r for r in rows}


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a process on `devices` simulated CPU devices, keeping the tests' own
  (tests/conftest.py: compiled without LLVM's optimisations)."""
  return f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'


def run_on_devices(devices: int, code: str) -> str:
  """The stdout of `python -c code` on `devices` forced CPU devices; fails if it fails."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': xla_flags(devices)}
  result = subprocess.run(
    [sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True, text=True, check=True
  )
  return result.stdout


# ----------------------------------------------------------------------------
# Images and files


def png(image):
  """The PNG bytes of a PIL image."""
  out = io.BytesIO()
  image.save(out, 'PNG')
  return out.getvalue()


def jpeg(image):
  """The JPEG bytes of a PIL image."""
  out = io.BytesIO()
  image.save(out, 'JPEG')
  return out.getvalue()


def noise(mode, size=(40, 30), seed=0):
  """A seeded random RGB image of `size` (width, height), converted to PIL `mode`."""
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def good_images():
  """Name -> file bytes, one per PIL mode (and one huge JPEG)."""
  i16 = Image.fromarray(np.linspace(1000, 3000, 40 * 30).reshape(30, 40).astype(np.uint16))
  assert i16.mode.startswith('I;16')
  return {
    'mode_1.png': png(noise('1')),
    'mode_l.png': png(noise('L')),
    'mode_i16.png': png(i16),
    'mode_p.png': png(noise('P')),
    'mode_rgba.png': png(noise('RGBA')),
    'mode_cmyk.jpg': jpeg(noise('CMYK')),
    'huge.jpg': jpeg(Image.new('L', (6000, 6000), 128)),
  }


def bad_images():
  """Name -> file bytes (None: no file) and the reason each is skipped."""
  png_bytes = png(noise('RGB', (200, 200)))
  jpeg_bytes = jpeg(noise('RGB', (200, 200)))
  return {
    'missing.png': (None, 'missing file'),
    'empty.png': (b'', 'empty file'),
    'text.png': (b'this is not an image\n', 'not an image'),
    'truncated.png': (png_bytes[: len(png_bytes) // 2], 'truncated or corrupt image'),
    'truncated.jpg': (jpeg_bytes[: len(jpeg_bytes) // 2], 'truncated or corrupt image'),
  }


def write(directory, name, data):
  """Writes `data` to directory/name, making the directory; None writes nothing."""
  if data is not None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(data)


def csv_field(value):
  """A quoted CSV field of raw bytes (any bytes, invalid UTF-8 included)."""
  return b'"' + value.replace(b'"', b'""') + b'"'


def write_csv(path, header, rows):
  """Writes a CSV of quoted fields; cells are str or raw bytes."""
  lines = [b','.join(csv_field(h.encode()) for h in header)]
  for row in rows:
    lines.append(b','.join(csv_field(v if isinstance(v, bytes) else v.encode()) for v in row))
  with open(path, 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')


# ----------------------------------------------------------------------------
# Records and prepared directories


def make_record(**overrides):
  """A valid record (not encoded), with `overrides` applied."""
  record = {
    'id': 'x-1',
    'group': 'case-1',
    'image': b'\x89PNG...',
    'caption': 'CT of the brain.',
    'labels': {'modality': 'CT'},
  }
  record.update(overrides)
  return record


def split_records(data_dir, split):
  """The decoded records of one split of a prepared directory."""
  return list(records.read_records(records.split_files(str(data_dir), split)))


def all_records(data_dir):
  """{split: decoded records} of a prepared directory."""
  return {split: split_records(data_dir, split) for split in records.SPLITS}


def records_by_id(data_dir):
  """{id: decoded record} of every split of a prepared directory."""
  return {r['id']: r for recs in all_records(data_dir).values() for r in recs}


def assert_groups_in_one_split(by_split):
  """Asserts that no group of {split: records} has records in two splits."""
  split_of_group = collections.defaultdict(set)
  for split, recs in by_split.items():
    for rec in recs:
      split_of_group[rec['group']].add(split)
  assert all(len(s) == 1 for s in split_of_group.values()), split_of_group


def prepare_checked(format_name, out, kwargs, **overrides):
  """Prepares `out`, checks its info, counts and groups; returns (info, {id: record})."""
  info = prepare.prepare(format_name, str(out), **{**kwargs, **overrides})
  assert info == records.read_dataset_info(str(out))
  by_split = all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  assert sum(v['count'] for v in info['splits'].values()) == info['converted']
  assert_groups_in_one_split(by_split)
  return info, {r['id']: r for recs in by_split.values() for r in recs}


def skipped_by_id(info):
  """{id: reason} of a dataset info's skipped inputs; asserts that no id is skipped twice."""
  skipped = {s['id']: s['reason'] for s in info['skipped']}
  assert len(skipped) == len(info['skipped'])
  return skipped


def assert_nothing_written(out):
  """Asserts that a failed prepare left no dataset info and no shards in `out`."""
  assert not os.path.exists(out / records.DATASET_INFO)
  assert not [n for n in os.listdir(out) if 'array_record' in n]


# ----------------------------------------------------------------------------
# The input pipeline


def data_config(**overrides):
  """A small config.data for the pipeline (16-pixel images, 16 tokens), with `overrides`."""
  config = ml_collections.ConfigDict(
    dict(
      image_size=16,
      max_text_length=16,
      tokenizer=tokenizer_lib.BUNDLED_MINILM,
      crop_scale=(0.5, 1.0),
      hflip_prob=0.0,
      laterality='swap',
      train_text='caption',
      dir='data/x',
      tfds_name='',
      train_split='train',
      num_threads=1,
      prefetch=8,
      workers=0,
    )
  )
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------
# DICOM

DICOM_SIZE = 32  # the side of the fixture's images

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
_DICOM_REASONS = {
  'misc/burned_in.dcm': 'burned-in annotation (may show PHI)',
  'misc/empty.dcm': 'empty file',
  'misc/mpeg2.dcm': 'unsupported transfer syntax',
  'misc/notes.txt': 'not a DICOM file',
  'misc/untagged.dcm': 'no caption (no describing tags, not in --captions)',
  'p1/truncated.dcm': 'truncated or corrupt DICOM',
  'p2/report.dcm': 'no pixel data',
}


def phi_strings(values):
  """The identifying strings to look for: values, names with spaces, name parts."""
  found = set()
  for value in values:
    found.add(value)
    found.add(value.replace('^', ' ').strip())
    found.update(re.split(r'[\^\s]+', value))
  return {s for s in found if len(s) >= 5}


FIXTURE_PHI = phi_strings(
  [v for p in _PATIENTS.values() for v in p.values()] + list(_OTHER_PHI.values())
)


def dicom_dataset(
  patient, pixels, photometric, bits=None, sop_class=uid.SecondaryCaptureImageStorage
):
  """A DICOM dataset of `pixels` carrying the planted identifying values of `patient`."""
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


def dicom_file_bytes(ds, **options):
  """The file bytes of a DICOM dataset; `options` go to `save_as`."""
  out = io.BytesIO()
  ds.save_as(out, **options)
  return out.getvalue()


def ramp(dtype, low, high):
  """A DICOM_SIZE square of raw values increasing left to right."""
  return np.tile(np.linspace(low, high, DICOM_SIZE), (DICOM_SIZE, 1)).astype(dtype)


# The CT file's bands of 4 columns, in Hounsfield units, and their expected
# grey values under its window (center 50, width 100: 0 HU black, 100 HU white).
CT_BANDS = [-1000, 0, 20, 50, 80, 100, 1000, 3000]
CT_EXPECTED = [0, 0, 51, 128, 204, 255, 255, 255]
FRAMES = 5  # the multi-frame file: frame k is black with a bright block at columns 6k..6k+3


def _good_dicom_files():
  """Path relative to the fixture -> file bytes, for the files that convert."""
  hu = np.repeat(np.array(CT_BANDS), DICOM_SIZE // len(CT_BANDS))
  stored = np.tile((hu + 1000) // 2, (DICOM_SIZE, 1)).astype(np.int16)  # slope 2, intercept -1000
  ct = _tagged(
    dicom_dataset('p1', stored, 'MONOCHROME2', sop_class=uid.CTImageStorage),
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
    dicom_dataset('p1', ramp(np.uint16, 100, 4000), 'MONOCHROME1', bits=12),
    Modality='CR',
    BodyPartExamined='CHEST',
  )
  rle = _tagged(
    dicom_dataset('p1', ramp(np.uint16, 0, 1000), 'MONOCHROME2', bits=12), Modality='MR'
  )
  rle.compress(uid.RLELossless)
  frames = np.zeros((FRAMES, DICOM_SIZE, DICOM_SIZE), np.uint8)
  for k in range(FRAMES):
    frames[k, :, 6 * k : 6 * k + 4] = 200
  multiframe = _tagged(
    dicom_dataset('p2', frames, 'MONOCHROME2'),
    Modality='US',
    SeriesDescription='Cine loop',
  )
  # A name typed into a describing tag: left out of the caption and labels.
  multiframe.add(DataElement(0x00180015, 'CS', 'Haraldsen', validation_mode=pydicom.config.IGNORE))
  rgb = np.zeros((DICOM_SIZE, DICOM_SIZE, 3), np.uint8)
  rgb[:, : DICOM_SIZE // 2] = (255, 0, 0)
  rgb[:, DICOM_SIZE // 2 :] = (0, 0, 255)
  color = _tagged(dicom_dataset('p2', rgb, 'RGB'), Modality='US', BodyPartExamined='ABDOMEN')
  mono2 = _tagged(dicom_dataset('p3', ramp(np.uint8, 0, 255), 'MONOCHROME2'), Modality='DX')
  bare = _tagged(
    dicom_dataset('p3', ramp(np.uint8, 10, 90), 'MONOCHROME2'),
    Modality='CT',
    StudyDescription='Sinus',
  )
  del bare.file_meta  # an old file: no preamble, no file meta, implicit VR
  knee = [
    _tagged(
      dicom_dataset('p4', ramp(np.uint16, i, 500 + i), 'MONOCHROME2', bits=16),
      Modality='MR',
      BodyPartExamined='KNEE',
    )
    for i in range(2)
  ]
  return {
    'p1/ct_window.dcm': dicom_file_bytes(ct, enforce_file_format=True),
    'p1/mono1.dcm': dicom_file_bytes(cr, enforce_file_format=True),
    'p1/rle.dcm': dicom_file_bytes(rle, enforce_file_format=True),
    'p2/multiframe.dcm': dicom_file_bytes(multiframe, enforce_file_format=True),
    'p2/rgb.dcm': dicom_file_bytes(color, enforce_file_format=True),
    'p3/mono2.dcm': dicom_file_bytes(mono2, enforce_file_format=True),
    'p3/no_preamble.dcm': dicom_file_bytes(bare, implicit_vr=True, little_endian=True),
    'p4/knee_a.dcm': dicom_file_bytes(knee[0], enforce_file_format=True),
    'p4/knee_b.dcm': dicom_file_bytes(knee[1], enforce_file_format=True),
  }


def _bad_dicom_files(good):
  """Path relative to the fixture -> file bytes, for the files skipped (see _DICOM_REASONS)."""
  image = ramp(np.uint8, 0, 255)
  burned_in = _tagged(
    dicom_dataset('p2', image, 'MONOCHROME2'), Modality='US', BurnedInAnnotation='YES'
  )
  mpeg2 = _tagged(dicom_dataset('p3', image, 'MONOCHROME2'), Modality='US')
  mpeg2.file_meta.TransferSyntaxUID = uid.MPEG2MPML
  mpeg2.PixelData = pydicom.encaps.encapsulate([b'\0' * 64])
  mpeg2['PixelData'].VR = 'OB'
  mpeg2['PixelData'].is_undefined_length = True
  report = _tagged(
    dicom_dataset('p2', None, '', sop_class=uid.BasicTextSRStorage),
    Modality='SR',
    StudyDescription='Report for Haraldsen',
  )
  untagged = dicom_dataset('p3', image, 'MONOCHROME2')
  truncated = good['p1/ct_window.dcm']
  return {
    'misc/burned_in.dcm': dicom_file_bytes(burned_in, enforce_file_format=True),
    'misc/empty.dcm': b'',
    'misc/mpeg2.dcm': dicom_file_bytes(mpeg2, enforce_file_format=True),
    'misc/notes.txt': b'Wojcik^Zofia MRN-8675309: call back on Monday.\n',
    'misc/untagged.dcm': dicom_file_bytes(untagged, enforce_file_format=True),
    'p1/truncated.dcm': truncated[: len(truncated) * 3 // 4],
    'p2/report.dcm': dicom_file_bytes(report, enforce_file_format=True),
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
  missing file); the options returned do not name it. Captions never change
  which files convert.

  Returns (prepare options, the ids that convert, sorted; {skipped id: reason}).
  """
  good = _good_dicom_files()
  for name, data in {**good, **_bad_dicom_files(good)}.items():
    write(os.path.dirname(os.path.join(directory, name)), os.path.basename(name), data)
  if captions:
    with open(captions, 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['file', 'caption'])
      writer.writerow(['p1/mono1.dcm', 'Frontal chest radiograph.'])
      writer.writerow(['p2/rgb.dcm', ' '])  # empty: the caption comes from the tags
      writer.writerow(['p3\\mono2.dcm', 'A  caption from\tthe side file.'])
      writer.writerow(['gone/missing.dcm', 'Not in the input.'])
  options = dict(input=str(directory), max_side=MAX_SIDE, max_bad_fraction=0.5)
  return options, sorted(good), dict(_DICOM_REASONS)


# ----------------------------------------------------------------------------
# Manifest, MedPix and ROCO fixtures


def write_manifest(directory):
  """A manifest CSV with good images of every mode and every kind of bad input.

  Returns (path, expected converted ids, expected skipped {id: reason}).
  """
  images = directory / 'data' / 'img'
  rows, good, bad = [], [], {}
  for i, (name, data) in enumerate(good_images().items()):
    write(images, name, data)
    rows.append([f'img/{name}', f'  A  scan\tnumber {i}\n', f'patient-{i % 3}', 'CT'])
    good.append(f'img/{name}')
  for name, (data, reason) in bad_images().items():
    write(images, name, data)
    rows.append([f'img/{name}', 'a caption', 'patient-9', 'MR'])
    bad[f'img/{name}'] = reason
  write(images, 'blank_caption.png', png(noise('L', seed=1)))
  rows.append(['img/blank_caption.png', ' \t ', 'patient-9', 'MR'])
  bad['img/blank_caption.png'] = 'empty caption'
  write(images, 'bad_utf8.png', png(noise('L', seed=2)))
  rows.append(['img/bad_utf8.png', BAD_UTF8, 'patient-1', 'MR'])
  good.append('img/bad_utf8.png')
  rows.append(['img/mode_l.png', 'the same image again', 'patient-1', 'CT'])  # a second caption
  path = directory / 'data' / 'manifest.csv'
  write_csv(path, ['path', 'text', 'patient', 'modality'], rows)
  return str(path), good, bad


REGIONS, VIEWS = ('head', 'chest', 'knee'), ('axial', 'coronal')


def write_labelled_manifest(directory, count=48, captions_per_image=1):
  """A CSV (columns file, report, region, view, patient) of `count` small images whose label
  columns are named unlike the demo's; each image has `captions_per_image` rows, one caption
  each. Returns the CSV's path."""
  rows = []
  for i in range(count):
    name = f'img/{i:03d}.png'
    write(directory / 'img', f'{i:03d}.png', png(noise('RGB', (48, 40), seed=i)))
    region, view = REGIONS[i % 3], VIEWS[i % 2]
    for c in range(captions_per_image):
      rows.append(
        [name, f'{view} image {c} of the {region}, case {i}.', region, view, f'p{i % 16}']
      )
  path = directory / 'labelled.csv'
  write_csv(path, ['file', 'report', 'region', 'view', 'patient'], rows)
  return str(path)


LABELLED_MANIFEST_OPTIONS = dict(
  image_column='file',
  caption_column='report',
  label_columns='region,view',
  group_column='patient',
  val_fraction=0.25,
  test_fraction=0.25,
  seed=0,
)


def write_manifest_fixture(directory):
  """write_manifest's CSV (columns path, text, patient, modality) plus a long caption."""
  path, good, bad = write_manifest(directory)
  write(directory / 'data' / 'img', 'long.png', good_images()['mode_rgba.png'])
  row = [b'img/long.png', LONG_CAPTION.encode(), b'patient-4', b'MR']
  with open(path, 'ab') as f:
    f.write(b','.join(map(csv_field, row)) + b'\n')
  good.append('img/long.png')
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
  for i, (name, data) in enumerate(good_images().items()):
    # Images may sit next to the export or in images/.
    write(directory / 'images' if i % 2 else directory, name, data)
    rows.append(['MPX0', name, f'Axial CT number {i}', 'CT', 'Brain', 'Axial'])
    good.append(name)
  for case, (name, (data, reason)) in enumerate(bad_images().items(), start=1):
    write(directory / 'images', name, data)
    rows.append([f'MPX{case}', name, 'A caption', 'MR', 'Spine', 'Sagittal'])
    bad[name] = reason
  for case, (name, caption) in enumerate(
    [('blank.png', '   '), ('utf8.png', BAD_UTF8), ('long.png', LONG_CAPTION)], start=10
  ):
    write(directory / 'images', name, good_images()['mode_p.png'])
    rows.append([f'MPX{case}', name, caption, 'MR', 'Spine', 'Sagittal'])
  bad['blank.png'] = 'empty caption'
  good += ['utf8.png', 'long.png']
  rows.append(['MPX20', 'mode_l.png', 'A repeated file name', 'MR', 'Chest', 'Coronal'])
  bad['mode_l.png'] = 'duplicate id'
  path = directory / 'export.csv'
  write_csv(path, header, rows)
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
    write(images[folder], roco_id + extension, data)
    lines[folder].append(roco_id.encode() + b'\t' + caption)
    return roco_id

  folders = list(lines)
  for i, (name, data) in enumerate(good_images().items()):
    good.append(add(folders[i % 3], name[name.index('.') :], data, b'CT image %d' % i))
  for name, (data, reason) in bad_images().items():
    bad[add('train', name[name.index('.') :], data, b'a caption')] = reason
  bad[add('train', '.png', good_images()['mode_l.png'], b'  ')] = 'empty caption'
  good.append(add('test', '.png', good_images()['mode_l.png'], BAD_UTF8))
  good.append(add('validation', '.png', good_images()['mode_l.png'], LONG_CAPTION.encode()))
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


# ----------------------------------------------------------------------------
# PubMedVision and reports fixtures

_VQA_AND_REPORTS_OPTIONS = {'max_side': MAX_SIDE, 'val_fraction': 0.3, 'test_fraction': 0.3}


def vqa_record(record_id, images, answer, modality='CT', body_part='Chest'):
  """A PubMedVision record: image paths and a human/gpt conversation answered by `answer`."""
  return {
    'id': record_id,
    'image': images,
    'conversations': [
      {'from': 'human', 'value': '<image>\nDescribe the image.'},
      {'from': 'gpt', 'value': answer},
    ],
    'modality': modality,
    'body_part': body_part,
  }


def write_pubmedvision_fixture(directory):
  """A PubMedVision JSON with good records (every image mode, multi-image) and bad ones.

  Returns (prepare kwargs, sorted expected converted ids, expected skipped {id: reason}).
  """
  images = os.path.join(directory, 'images')
  data, good, bad = [], [], {}
  parts = ['Chest', 'Brain', 'Abdomen']
  for i, (name, image) in enumerate(good_images().items()):
    write(images, name, image)
    # Every good record has two or three images; only the first is used.
    extra = [f'images/extra_{i}_{k}.png' for k in range(1 + i % 2)]
    for path in extra:
      write(images, os.path.basename(path), png(noise('L', seed=100 + i)))
    paths = [f'images/{name}', *extra]
    data.append(
      vqa_record(f'Alignment_VQA_{i}', paths, f'A scan number {i}.', body_part=parts[i % 3])
    )
    good.append(f'Alignment_VQA_{i}')
  for i in range(7, 13):
    write(images, f'plain_{i}.png', png(noise('RGB', seed=i)))
    paths = [f'images/plain_{i}.png']
    data.append(vqa_record(f'Alignment_VQA_{i}', paths, f'MRI number {i}.', 'MRI', parts[i % 3]))
    good.append(f'Alignment_VQA_{i}')
  # Placeholders and markdown are stripped; two records share one image.
  data.append(
    vqa_record('Alignment_VQA_13', ['images/plain_7.png'], '<image>\n# Findings\n**Mass**')
  )
  good.append('Alignment_VQA_13')
  write(images, 'utf8.png', png(noise('L', seed=3)))
  data.append(vqa_record('Alignment_VQA_14', ['images/utf8.png'], 'bad BADBYTES bytes'))
  good.append('Alignment_VQA_14')
  for i, (name, (image, reason)) in enumerate(bad_images().items()):
    write(images, name, image)
    data.append(vqa_record(f'Bad_{i}', [f'images/{name}', 'images/mode_l.png'], 'A caption.'))
    bad[f'Bad_{i}'] = reason
  planted = {
    'Bad_empty_caption': (['images/plain_8.png'], ' \n\t ', 'empty caption'),
    'Bad_only_placeholder': (['images/plain_8.png'], '<image>', 'empty caption'),
    'Bad_no_image': ([], 'A caption.', 'no image'),
    'Bad_image_string': ('images/plain_8.png', 'A caption.', 'image is not a list'),
    'Bad_image_number': ([7], 'A caption.', 'image is not a path'),
  }
  for record_id, (paths, answer, reason) in planted.items():
    data.append(vqa_record(record_id, paths, answer))
    bad[record_id] = reason
  no_answer = vqa_record('Bad_no_gpt', ['images/plain_8.png'], '')
  no_answer['conversations'] = no_answer['conversations'][:1]
  data.append(no_answer)
  bad['Bad_no_gpt'] = 'no gpt turn'
  data.append(42)
  bad[f'record {len(data)}'] = 'not a JSON object'
  data.append(vqa_record('Alignment_VQA_1', ['images/plain_9.png'], 'The same id again.'))
  bad['Alignment_VQA_1'] = 'duplicate id'
  path = os.path.join(directory, 'PubMedVision_Alignment_VQA.json')
  with open(path, 'wb') as f:
    f.write(json.dumps(data, indent=1).encode().replace(b'BADBYTES', b'\xff\xfe'))
  kwargs = dict(input=path, max_bad_fraction=0.5, **_VQA_AND_REPORTS_OPTIONS)
  return kwargs, sorted(good), bad


def mimic_report(findings=None, impression=None, indication='___F with cough.'):
  """A MIMIC-CXR style report's bytes (lines indented by one space, as in MIMIC)."""
  lines = ['                                 FINAL REPORT', ' EXAMINATION:  CHEST (PA AND LAT)']
  lines += ['', f' INDICATION:  {indication}', '', ' COMPARISON:  None.']
  if findings is not None:
    lines += ['', ' FINDINGS:', '', f' {findings}']
  if impression is not None:
    lines += ['', ' IMPRESSION:', '', f' {impression}']
  return ('\n'.join(lines) + '\n').encode()


def write_reports_fixture(directory):
  """Reports and images in the MIMIC-CXR(-JPG) layout, in two trees, with bad inputs.

  Returns (prepare kwargs, sorted expected converted ids, expected skipped {id: reason}).
  """
  reports = os.path.join(directory, 'mimic-cxr-reports')
  images = os.path.join(directory, 'mimic-cxr-jpg')
  good, bad = [], {}
  write(reports, 'LICENSE.txt', b'Not a report.\n')  # ignored at the top of the tree
  write(images, 'metadata.csv', b'dicom_id,study_id\n')

  def study(patient, number, report, files, reason=None):
    folder = os.path.join('files', f'p{patient[:2]}', f'p{patient}')
    if report is not None:
      write(os.path.join(reports, folder), f's{number}.txt', report)
    for name, data in files.items():
      record_id = f'p{patient}/s{number}/{os.path.splitext(name)[0]}'
      if data is None:  # a dangling link: listed, but the file is missing
        os.makedirs(os.path.join(images, folder, f's{number}'), exist_ok=True)
        os.symlink('gone.png', os.path.join(images, folder, f's{number}', name))
      else:
        write(os.path.join(images, folder, f's{number}'), name, data)
      if reason:
        bad[record_id] = reason
      else:
        good.append(record_id)

  modes = good_images()
  both = mimic_report('Lungs clear, patient one.', 'No acute process, patient one.')
  study('10000001', 50000001, both, {n: modes[n] for n in ('mode_1.png', 'mode_i16.png')})
  # A JPEG and a PNG with one stem: the second by name is a duplicate id.
  study(
    '10000001',
    50000001,
    None,
    {'mode_l.jpg': jpeg(noise('L')), 'mode_l.png': modes['mode_l.png']},
  )
  good.remove('p10000001/s50000001/mode_l')
  bad['p10000001/s50000001/mode_l'] = 'duplicate id'
  study(
    '10000001',
    50000002,
    mimic_report('Heart normal.'),
    {n: modes[n] for n in ('mode_p.png', 'mode_rgba.png')},
  )
  empty_impression = mimic_report('Small left effusion.', impression='  ')
  study(
    '10000002', 50000003, empty_impression, {n: modes[n] for n in ('mode_cmyk.jpg', 'huge.jpg')}
  )
  bad_bytes = mimic_report('x', 'Bad BADBYTES bytes, ___ kept.').replace(b'BADBYTES', b'\xff\xfe')
  study('10000002', 50000004, bad_bytes, {'a.png': png(noise('L')), 'b.png': png(noise('P'))})
  study('10000003', 50000005, both, {'c.png': png(noise('RGB'))})
  for name, (data, reason) in bad_images().items():
    # Renamed so that truncated.png and truncated.jpg get different ids.
    stem, ext = os.path.splitext(name)
    study('10000003', 50000005, None, {f'{stem}_{ext[1:]}{ext}': data}, reason)
  study('10000003', 50000005, None, {'scan.dcm': b'DICM'}, 'not a DICOM file')
  # MIMIC-CXR's original DICOMs convert like the JPGs.
  chest = dicom_dataset('cxr', ramp(np.uint16, 0, 4095), 'MONOCHROME1', bits=12)
  study(
    '10000020',
    50000020,
    mimic_report('Clear.', 'Normal chest.'),
    {'x.dcm': dicom_file_bytes(chest)},
  )
  no_sections = mimic_report(indication='Cough.')
  study(
    '10000004',
    50000006,
    no_sections,
    {'d.png': png(noise('L'))},
    'no impression or findings section',
  )
  study('10000004', 50000007, b' \n \n', {'e.png': png(noise('L'))}, 'empty report')
  study('10000005', 50000008, mimic_report('Clear.'), {})
  bad['p10000005/s50000008'] = 'no image'
  study('10000005', 50000009, None, {'f.png': png(noise('L'))}, 'no report')
  for k in range(6):
    report = mimic_report(f'Findings of patient {k}.', f'Impression of patient {k}.')
    files = {f'view{v}.png': png(noise('L', seed=10 * k + v)) for v in range(2)}
    study(f'1000001{k}', 50000010 + k, report, files)
  kwargs = dict(input=reports, images=images, max_bad_fraction=0.5, **_VQA_AND_REPORTS_OPTIONS)
  return kwargs, sorted(good), bad


# ---- Models ----

# Shapes the tower tests share, so that JAX's per-op compile cache is hit across them.
IMAGE_SHAPE = (2, 32, 32, 3)
RESNET_WIDTH = 16
TINY_BERT = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
TEXT_LENGTHS = (5, 8)
SEQ_LEN = 8


def model_images():
  """A fixed batch of random float images of IMAGE_SHAPE."""
  return jax.random.normal(jax.random.key(1), IMAGE_SHAPE)


def model_texts():
  """(token ids, attention mask) [2, SEQ_LEN] of texts of TEXT_LENGTHS tokens."""
  ids = jax.random.randint(
    jax.random.key(2), (len(TEXT_LENGTHS), SEQ_LEN), 1, TINY_BERT['vocab_size']
  )
  mask = (np.arange(SEQ_LEN)[None, :] < np.array(TEXT_LENGTHS)[:, None]).astype(np.int32)
  return ids, jnp.asarray(mask)


def capture(model, variables, path, *args, **kwargs):
  """Runs `model` and returns the output of its submodule at `path`."""
  _, state = model.apply(
    variables,
    *args,
    capture_intermediates=lambda mdl, method: mdl.path == path and method == '__call__',
    mutable=['intermediates'],
    **kwargs,
  )
  node = state['intermediates']
  for name in path:
    node = node[name]
  return np.asarray(node['__call__'][0])


def unit_rows(rng, shape):
  """Random rows of unit length (embeddings), float64."""
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- Evaluation ----


def encoded_split(
  name, image, text=None, labels=None, vocabs=None, more_text=None, more_text_record=(), **meta
):
  """An `EncodedSplit` from arrays; meta lists ('id', 'group', 'caption', 'captions',
  'image_key') default to one distinct record, group, caption and image per row."""
  from medclip_jax.evaluation.embedding import EncodedSplit  # pylint: disable=import-outside-toplevel

  n = len(image if image is not None else text)
  defaults = {
    'id': [f'{name}-{i}' for i in range(n)],
    'group': [f'{name}-group-{i}' for i in range(n)],
    'caption': [f'caption {i}' for i in range(n)],
    'labels': [{} for _ in range(n)],
    'image_key': [f'{name}-image-{i}' for i in range(n)],
  }
  meta = {**defaults, **meta}
  meta.setdefault('captions', [[c] for c in meta['caption']])
  if more_text is None and text is not None:
    more_text = np.zeros((0, text.shape[1]), text.dtype)
  labels = {f: np.asarray(v) for f, v in (labels or {}).items()}
  return EncodedSplit(
    name,
    image,
    text,
    more_text,
    np.asarray(more_text_record, np.int64),
    labels,
    dict(vocabs or {}),
    meta,
  )


class FakeEmbedder:
  """Stands in for `evaluation.embedding.Embedder`: splits are given, texts embed by `text_fn`."""

  def __init__(self, splits: dict, text_fn=None):
    self.splits = splits
    self.text_fn = text_fn
    self.encoded = []  # the texts encode_strings was asked for, call by call

  def encode_strings(self, variables, texts):
    del variables
    self.encoded.append(list(texts))
    vectors = np.stack([np.asarray(self.text_fn(t), np.float64) for t in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

  def encode_split(self, variables, split, label_vocabs, images=True, texts=True):
    del variables, label_vocabs, images, texts
    return self.splits[split]

  def split_size(self, split):
    return len(self.splits[split]) if split in self.splits else 0

  def image_bytes(self, split, index):
    return png(noise('L', seed=index))


# ---- Train steps without a dataset ----


def step_config(overrides=None):
  """The demo config at the smallest towers (ResNet18 of width 4 at 32 px, a one-layer BERT
  of width 32 over 8 tokens of a 100-token vocabulary, 16-d embeddings), reading no data;
  `overrides` maps dotted fields to values, e.g. {'train.batch_size': 32}."""
  values = {
    'data.image_size': 32,
    'data.max_text_length': 8,
    'model.embed_dim': 16,
    'model.image.width': 4,
    'model.text.init': '',
    'model.text.vocab_size': 100,
    'model.text.hidden_size': 32,
    'model.text.num_layers': 1,
    'model.text.num_heads': 2,
    'model.text.intermediate_size': 64,
    'train.lr_multipliers.text_encoder': 1.0,
    **(overrides or {}),
  }
  config = demo.get_config()
  config.update_from_flattened_dict(values)
  return config


# The [MASK] id random batches use (the tiny vocabularies have no tokenizer).
MASK_ID = 3


def random_batch(config, seed=0, text_features=False, mlm=False):
  """A global batch of `config.train.batch_size` random rows as the train step reads them:
  uint8 images, token ids of 2 to max_text_length tokens, with `text_features` a locked
  text tower's features, with `mlm` EntMLM's columns (a third of the tokens between [CLS]
  and [SEP] masked with MASK_ID, half the rows counting an entity)."""
  rng = np.random.default_rng(seed)
  rows, size, length = config.train.batch_size, config.data.image_size, config.data.max_text_length
  mask = np.arange(length)[None, :] < rng.integers(2, length + 1, rows)[:, None]
  batch = {
    'image': rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
    'input_ids': np.where(
      mask, rng.integers(1, config.model.text.vocab_size, mask.shape), 0
    ).astype(np.int32),
    'attention_mask': mask.astype(np.int32),
    'truncated': np.zeros(rows, bool),
  }
  if text_features:
    features = rng.normal(size=(rows, config.model.text.hidden_size))
    batch['text_features'] = features.astype(np.float32)
  if mlm:
    inner = mask & (np.arange(length) > 0) & (np.arange(length) < mask.sum(1, keepdims=True) - 1)
    masked = inner & (rng.uniform(size=mask.shape) < 1 / 3)
    batch['mlm_input_ids'] = np.where(masked, MASK_ID, batch['input_ids']).astype(np.int32)
    batch['mlm_labels'] = np.where(masked, batch['input_ids'], -1).astype(np.int32)
    batch['mlm_entities'] = (np.arange(rows) % 2).astype(np.int32)
  return batch


def step_state(config) -> state_lib.TrainState:
  """A step-0 train state of `config`, as `state.create` builds it except that the model's
  initialisers draw from XLA's own generator ('unsafe_rbg' keys): threefry's would take
  most of a test's time to compile on a CPU."""
  parts = setup.shapes(config)
  keys = jax.random.split(jax.random.key(config.seed, impl='unsafe_rbg'))
  params, batch_stats = jax.jit(
    lambda k: state_lib.initial_params(parts.model, parts.objectives, config, k[0], k[1])
  )(keys)
  return state_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=parts.tx.init(params),
    rng=jax.random.PRNGKey(config.seed),
    skipped=jnp.zeros((), jnp.int32),
  )


def step_gradient(config, batch):
  """The train step's gradient (`step.make_gradient`) at `step_state(config)` on the mesh of
  `config.mesh`: (its values as NumPy arrays, 'loss', 'metrics/<name>', 'batch_stats/<path>'
  and 'grads/<path>' with paths '/'-joined; the compiled function)."""
  values, compiled = step_gradient_fn(config, batch)
  return values(batch), compiled


def step_gradient_fn(config, batch):
  """(batch -> `step_gradient`'s values, the compiled function), compiled once for batches
  shaped like `batch`."""
  mesh = sharding.create_mesh(config.mesh)
  parts = setup.shapes(config)
  state = step_state(config)
  args = lambda batch: (
    state.params,
    state.batch_stats,
    sharding.to_global_batch(batch, mesh),
    state.rng,
  )
  gradient = jax.jit(step.make_gradient(parts.model, parts.objectives, mesh, config))
  compiled = gradient.lower(*args(batch)).compile()

  def values(batch):
    (loss, (metrics, batch_stats)), grads = compiled(*args(batch))
    out = {'loss': loss, **{f'metrics/{k}': v for k, v in metrics.items()}}
    for name, tree in (('batch_stats', batch_stats), ('grads', grads)):
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        out['/'.join([name, *(str(k.key) for k in path)])] = leaf
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

  return values, compiled
