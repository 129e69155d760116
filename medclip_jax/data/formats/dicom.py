"""`dicom`: a folder of DICOM files (searched recursively), split by patient.

Every file under --input (but a folder holding a prepared dataset, such as an
earlier --output) is one input: it becomes a record or is skipped
with a reason ('empty file', 'not a DICOM file', 'truncated or corrupt
DICOM', 'no pixel data' for DICOMDIRs, reports and other non-image objects,
'not a picture (SEG: segmentation)' for segmentations, dose grids and the like,
'burned-in annotation (may show PHI)' where BurnedInAnnotation is YES,
'image too large', 'unsupported transfer syntax', 'cannot decode ...' when
a compressed transfer syntax's decoder is not installed, 'no caption').
Files without the 128-byte preamble are read too. The record id is the path
relative to --input.

Pixels: the middle frame of a multi-frame file; grey images go through the
Modality LUT (or RescaleSlope / RescaleIntercept), then the file's VOI LUT,
else its first WindowCenter / WindowWidth (linear), else a 0.5-99.5
percentile window, to 8 bits; MONOCHROME1 is inverted (so bone and contrast
are bright). PALETTE COLOR, RGB and YBR images become RGB at their stored
bit depth. The PNG is mode 'L' or 'RGB' with its longer side <= max_side.
Compressed transfer syntaxes (JPEG baseline / lossless, JPEG-LS, JPEG 2000,
RLE) are decoded by pydicom's pylibjpeg plugins (requirements.txt).

Captions: from --captions, a CSV with columns `file` (the path relative to
--input, or absolute; a CSV whose paths match no file is refused, and the rows
that match none are listed in dataset_info.json and warned of) and `caption`,
where it has a non-empty caption for the file; else built from four describing
tags as '<modality> of the <body part>. Study: <StudyDescription>. Series:
<SeriesDescription>.' (e.g. 'CT scan of the chest. Study: CT thorax. Series:
Axial 5mm.'; the modality noun is from _MODALITY_NOUNS), leaving out missing
parts and a Series equal to the Study; files with none of them are skipped ('no
caption'). Labels: `modality` (the Modality code, e.g. 'CT', 'MR') and
`body_part` (BodyPartExamined in lower case, e.g. 'chest') where present.

PHI: no value of a patient-identifying tag (names, IDs, birth date, address,
physicians, institution, accession number, ...) is copied into a caption,
group, label, log line or dataset_info.json: captions come only from the
four tags above, and a tag value quoting an identifying value of its file
(a whole word, any case) is left out. pydicom's warnings and log lines on bad
files, which may quote tag values, are silenced. The group, which keeps
a patient's images in one split, is a salted sha256 of PatientID
('patient-<16 hex>'), else of StudyInstanceUID ('study-<16 hex>'), else the
record id: a pseudonym, not anonymisation (whoever knows a PatientID can
recompute its group). Record ids are file paths, so file and folder names
must not hold PHI; --captions text is used as given. Text burned into the
pixels (common in ultrasound and secondary captures) cannot be seen here:
only files flagged so are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import posixpath
import re
import warnings
from collections.abc import Iterator

import numpy as np
import pydicom
import pydicom.datadict
import pydicom.pixels
from PIL import Image
from pydicom import uid as dicom_uid
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

from medclip_jax.data import ingest
from medclip_jax.data import records
from medclip_jax.data.formats import base

# Tags whose values identify a patient. They are never output; a describing
# tag quoting one of them (e.g. a name typed into SeriesDescription) is dropped.
_IDENTIFYING = (
  'PatientName',
  'PatientID',
  'PatientBirthDate',
  'PatientBirthName',
  'PatientAddress',
  'PatientTelephoneNumbers',
  'PatientMotherBirthName',
  'OtherPatientIDs',
  'OtherPatientNames',
  'IssuerOfPatientID',
  'MedicalRecordLocator',
  'ReferringPhysicianName',
  'PerformingPhysicianName',
  'OperatorsName',
  'NameOfPhysiciansReadingStudy',
  'RequestingPhysician',
  'InstitutionName',
  'InstitutionAddress',
  'InstitutionalDepartmentName',
  'StationName',
  'AccessionNumber',
)
# Modality code -> the noun its caption starts with (other codes: '<code> image').
_MODALITY_NOUNS = {
  'CT': 'CT scan',
  'MR': 'MRI scan',
  'CR': 'X-ray',
  'DX': 'X-ray',
  'MG': 'Mammogram',
  'US': 'Ultrasound image',
  'NM': 'Nuclear medicine scan',
  'PT': 'PET scan',
  'XA': 'Angiogram',
  'RF': 'Fluoroscopy image',
  'OT': 'Medical image',
}
# Objects with pixel data that are not pictures of the patient: a CLIP
# image tower should not learn label maps, dose grids or parametric maps.
_NOT_PICTURES = {
  'SEG': 'segmentation',
  'RTDOSE': 'radiotherapy dose',
  'RTSTRUCT': 'radiotherapy structures',
  'RWV': 'real world value map',
}
_PIXEL_KEYWORDS = ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData')
# A file without the preamble starts with a file meta (group 0002) or dataset
# (group 0008, which holds the mandatory SOP Class UID) element tag.
_HEADERLESS_STARTS = (b'\x02\x00', b'\x08\x00', b'\x00\x08')
_PLUGINS = 'pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle'
_CORRUPT = 'truncated or corrupt DICOM'
# Domain separation for the group hashes (see the module docstring).
_GROUP_SALT = b'medclip_jax.dicom.group\0'
_UNDEFINED_LENGTH = 0xFFFFFFFF
# The functional group macros that hold a frame's rescale and window.
_FRAME_MACROS = ('PixelValueTransformationSequence', 'FrameVOILUTSequence')


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences warnings and logging while pydicom and its decoders read a file.

  On bad files they warn and log (decoders with tracebacks), and some of
  these messages quote tag values.
  """
  previous = logging.root.manager.disable
  logging.disable(logging.CRITICAL)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      yield
  finally:
    logging.disable(previous)


def _find_files(directory: str, exclude: str) -> list[str]:
  """Every file under `directory` (but `exclude`, and prepared datasets: an earlier --output
  inside --input), in a stable order."""
  paths = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(
      d for d in dirs if not os.path.isfile(os.path.join(root, d, records.DATASET_INFO))
    )
    paths += [os.path.join(root, name) for name in sorted(files)]
  return [p for p in paths if os.path.abspath(p) != exclude]


def _read_captions(
  path: str,
  input: str,  # pylint: disable=redefined-builtin
) -> tuple[dict[str, str], int]:
  """The --captions CSV as {path relative to --input: caption} (its paths may also be
  absolute, or start with --input's folder name), and how many of its rows could not be
  read."""
  if not os.path.isfile(path):
    raise base.OptionError(f'--captions={path!r} is not a file.')
  if os.path.splitext(path)[1].lower() != '.csv':
    raise base.OptionError(f'--captions={path!r} must be a .csv file (columns file, caption).')
  columns, rows = base.read_table(path)
  column = {c.strip().lower(): c for c in columns}
  if 'file' not in column or 'caption' not in column:
    raise base.OptionError(
      f'--captions={path!r} needs the columns file (the DICOM file path relative to --input) '
      f'and caption; its columns are {", ".join(map(repr, columns)) or "none"}.'
    )
  root, folder = os.path.abspath(input), os.path.basename(os.path.abspath(input))
  captions, bad_rows = {}, 0
  for row in rows:
    if isinstance(row, base.BadRow):
      bad_rows += 1
      continue
    name = base.text(row.get(column['file'])).replace('\\', '/')
    if not name:
      continue
    if os.path.isabs(name):
      name = os.path.relpath(name, root).replace(os.sep, '/')
    name = posixpath.normpath(name)
    if name.startswith(f'{folder}/') and not os.path.exists(os.path.join(root, name)):
      name = name[len(folder) + 1 :]
    captions[name] = row.get(column['caption']) or ''
  return captions, bad_rows


def _digest(value: str) -> str:
  return hashlib.sha256(_GROUP_SALT + value.encode('utf-8', 'surrogateescape')).hexdigest()[:16]


def _values(ds: pydicom.Dataset, keyword: str) -> list[str]:
  """The non-empty values of tag `keyword` as text."""
  value = ds.get(keyword)
  values = value if isinstance(value, (MultiValue, list)) else [value]
  return [text for v in values if (text := base.text(v))]


def _identifying(ds: pydicom.Dataset) -> list[str]:
  """The identifying values of `ds`, and every part of its person names."""
  found = []
  for keyword in _IDENTIFYING:
    for value in _values(ds, keyword):
      found.append(value)
      if pydicom.datadict.dictionary_VR(keyword) == 'PN':
        found += re.split(r'[\^=\s]+', value)
  return [v for v in found if len(v) >= 2]


def _clean_tag(ds: pydicom.Dataset, keyword: str, identifying: list[str]) -> str:
  """Tag `keyword` as readable text; '' if missing or quoting an identifying value."""
  text = re.sub(r'[\s^_]+', ' ', ' '.join(_values(ds, keyword))).strip().rstrip('.').strip()
  for value in identifying:
    if re.search(rf'(?<!\w){re.escape(value)}(?!\w)', text, re.IGNORECASE):
      return ''
  return text


def _describe(ds: pydicom.Dataset) -> tuple[str, dict[str, str]]:
  """The caption built from the describing tags ('' if none), and the labels."""
  identifying = _identifying(ds)
  modality = _clean_tag(ds, 'Modality', identifying).upper()
  body_part = _clean_tag(ds, 'BodyPartExamined', identifying).lower()
  study = _clean_tag(ds, 'StudyDescription', identifying)
  series = _clean_tag(ds, 'SeriesDescription', identifying)
  labels = {'modality': modality, 'body_part': body_part}
  labels = {k: v for k, v in labels.items() if v}
  if not (modality or body_part or study or series):
    return '', labels
  noun = _MODALITY_NOUNS.get(modality, f'{modality} image' if modality else 'Medical image')
  parts = [f'{noun} of the {body_part}.' if body_part else f'{noun}.']
  if study:
    parts.append(f'Study: {study}.')
  if series and series.lower() != study.lower():
    parts.append(f'Series: {series}.')
  return ' '.join(parts), labels


def _group(ds: pydicom.Dataset, record_id: str) -> str:
  for prefix, keyword in (('patient', 'PatientID'), ('study', 'StudyInstanceUID')):
    values = _values(ds, keyword)
    if values:
      return f'{prefix}-{_digest(values[0])}'
  return record_id


def _tags(ds: pydicom.Dataset, record_id: str) -> tuple[str, dict[str, str], str]:
  """The caption from tags, labels and group of `ds`; BadRecord for unreadable tags."""
  try:
    return *_describe(ds), _group(ds, record_id)
  except Exception as e:  # pydicom converts tag values when read, raising many types.
    raise ingest.BadRecord(_CORRUPT) from e


def _is_truncated(ds: pydicom.Dataset) -> bool:
  """Whether the last element is shorter than its length (pydicom reads it silently)."""
  if not len(ds):  # e.g. an encapsulated pixel data sequence never closed
    return True
  last = ds.get_item(max(ds.keys()))
  return (
    isinstance(last, RawDataElement)
    and last.length != _UNDEFINED_LENGTH
    and last.value is not None
    and len(last.value) < last.length
  )


def _read(path: str) -> pydicom.Dataset:
  """The DICOM file at `path`, with a transfer syntax; BadRecord if unusable."""
  data = ingest.read_bytes(path)
  if data[128:132] != b'DICM' and data[:2] not in _HEADERLESS_STARTS:
    raise ingest.BadRecord('not a DICOM file')
  try:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
  except Exception as e:  # pydicom raises many types on corrupt data.
    raise ingest.BadRecord(_CORRUPT) from e
  if _is_truncated(ds):
    raise ingest.BadRecord(_CORRUPT)
  if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
    raise ingest.BadRecord('no pixel data')
  modality = base.text(ds.get('Modality')).upper()
  if modality in _NOT_PICTURES:
    raise ingest.BadRecord(f'not a picture ({modality}: {_NOT_PICTURES[modality]})')
  if base.text(ds.get('BurnedInAnnotation')).upper() == 'YES':
    raise ingest.BadRecord('burned-in annotation (may show PHI)')
  if 'TransferSyntaxUID' not in ds.file_meta:
    # No file meta (as in old files without the preamble): the encoding it was read with.
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (
      dicom_uid.ImplicitVRLittleEndian
      if implicit
      else dicom_uid.ExplicitVRLittleEndian
      if little
      else dicom_uid.ExplicitVRBigEndian
    )
  return ds


def _window(ds: pydicom.Dataset) -> tuple[float, float] | None:
  """The file's first WindowCenter / WindowWidth as (low, high), if valid."""
  try:
    center, width = (_values(ds, k)[0] for k in ('WindowCenter', 'WindowWidth'))
    center, width = float(center), float(width)
  except (IndexError, ValueError):
    return None
  if not (np.isfinite(center) and np.isfinite(width) and width > 0):
    return None
  return center - width / 2, center + width / 2


def _use_frame_groups(ds: pydicom.Dataset, index: int) -> None:
  """Copies frame `index`'s rescale and window into `ds` (ours to change).

  Enhanced multi-frame files keep them in functional groups, per frame or
  shared by all frames, instead of at the top level.
  """
  groups = list(ds.get('SharedFunctionalGroupsSequence') or [])[:1]
  per_frame = ds.get('PerFrameFunctionalGroupsSequence') or []
  groups += list(per_frame)[index : index + 1]
  for group in groups:
    for keyword in _FRAME_MACROS:
      for element in group[keyword][0] if group.get(keyword) else []:
        ds[element.tag] = element


def _grey(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
  """A grey frame in [0, 1]: Modality LUT, VOI LUT or window, MONOCHROME1 inverted."""
  values = pydicom.pixels.apply_modality_lut(pixels, ds)
  window = _window(ds)
  if 'VOILUTSequence' in ds:
    values = pydicom.pixels.apply_voi(values, ds)
    window = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
  values = values.astype(np.float32)
  low, high = window or np.percentile(values, (0.5, 99.5))
  if high <= low:  # mostly one value (e.g. a mask): use the full range
    low, high = values.min(), values.max()
  if high > low:
    grey = np.clip((values - low) / (high - low), 0, 1)
  else:
    grey = np.zeros(values.shape, np.float32)
  if base.text(ds.get('PhotometricInterpretation')) == 'MONOCHROME1':
    grey = 1 - grey
  return grey


def _frame(ds: pydicom.Dataset) -> np.ndarray:
  """The middle frame in [0, 1], (rows, columns) grey or (rows, columns, 3) RGB."""
  if int(ds.Rows) * int(ds.Columns) > 2 * Image.MAX_IMAGE_PIXELS:  # PIL's bomb limit
    raise ingest.BadRecord('image too large')
  index = int(ds.get('NumberOfFrames') or 1) // 2
  # as_rgb (the default) turns YBR into RGB.
  pixels = pydicom.pixels.pixel_array(ds, index=index)
  _use_frame_groups(ds, index)
  photometric = base.text(ds.get('PhotometricInterpretation'))
  samples = int(ds.get('SamplesPerPixel') or 1)
  if photometric == 'PALETTE COLOR':
    rgb = pydicom.pixels.apply_color_lut(pixels, ds)
    # 16-bit LUTs may hold 8-bit values (pydicom also reads big endian ones so).
    return rgb / (255 if rgb.max() <= 255 else 65535)
  if samples == 3 and pixels.ndim == 3:
    return pixels / (2.0 ** int(ds.BitsStored) - 1)
  if samples == 1 and pixels.ndim == 2:
    return _grey(pixels, ds)
  raise ingest.BadRecord('unsupported photometric interpretation')


def _image(ds: pydicom.Dataset, max_side: int) -> Image.Image:
  """The image of `ds`, mode 'L'; BadRecord if it cannot be decoded."""
  with _quiet():
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    try:
      decoder = pydicom.pixels.get_decoder(transfer_syntax)
    except NotImplementedError as e:
      raise ingest.BadRecord('unsupported transfer syntax') from e
    if not decoder.is_available:
      raise ingest.BadRecord(f'cannot decode {transfer_syntax.name} (install {_PLUGINS})')
    try:
      frame = _frame(ds)
    except ingest.BadRecord:
      raise
    except Exception as e:  # decoders raise many types on corrupt data.
      raise ingest.BadRecord(_CORRUPT) from e
  image = Image.fromarray(np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8))
  image.thumbnail((max_side, max_side))
  return image


def open_image(path: str, max_side: int = ingest.DEFAULT_MAX_SIDE) -> Image.Image:
  """The image of the DICOM file at `path`, mode 'L' (the rules above); raises
  ingest.BadRecord."""
  with _quiet():
    ds = _read(path)
  return _image(ds, max_side)


def load_image(path: str, max_side: int = ingest.DEFAULT_MAX_SIDE) -> bytes:
  """The image of the DICOM file at `path` as PNG bytes (the rules above).

  For formats whose images may be DICOM (reports); raises ingest.BadRecord.
  """
  return ingest.encode_png(open_image(path, max_side))


def source(
  input: str | None = None,  # pylint: disable=redefined-builtin
  captions: str = '',
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> base.Source:
  """A folder of DICOM files, with optional side captions (see the module docstring)."""
  base.check_real_options(
    'dicom', input, True, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  side_captions, bad_rows = _read_captions(captions, input) if captions else ({}, 0)
  captions_path = os.path.abspath(captions) if captions else ''
  paths = _find_files(input, exclude=captions_path)
  caption_info = {'file': base.path_text(captions) if captions else '', 'matched': 0}
  record_id_of = lambda path: base.text(os.path.relpath(path, input).replace(os.sep, '/'))
  unmatched = sorted(side_captions.keys() - set(map(record_id_of, paths)))
  if side_captions and len(unmatched) == len(side_captions):
    # Most likely paths relative to another folder: every file would silently fall back
    # to captions made from its tags.
    raise base.OptionError(
      f'--captions={captions!r}: none of its {len(side_captions)} file paths names a file '
      f'under --input={input!r} (e.g. {next(iter(side_captions))!r}'
      + (f'; the files there are named like {record_id_of(paths[0])!r}' if paths else '')
      + '). Give each path relative to --input, or absolute.'
    )
  notes = []
  if unmatched:
    caption_info['unmatched'] = unmatched
    notes.append(
      f'--captions: {len(unmatched)} of its {len(side_captions)} file paths name no file '
      f'under --input (e.g. {", ".join(map(repr, unmatched[:3]))}; all listed in '
      'dataset_info.json): the files they were meant for, if any, are captioned from their '
      'tags. Paths are case-sensitive.'
    )
  if bad_rows:
    caption_info['unreadable_rows'] = bad_rows
    notes.append(
      f'--captions: {bad_rows} row(s) have more or fewer cells than the header (an unquoted '
      'comma, or a quote left open) and were not read.'
    )

  def entry(path: str) -> base.Entry | base.Skipped:
    record_id = record_id_of(path)
    with _quiet():
      try:
        ds = _read(path)
        caption, labels, group = _tags(ds, record_id)
      except ingest.BadRecord as e:
        return base.Skipped(record_id, e.reason)
    side = side_captions.get(record_id, '')
    if side.strip():
      caption_info['matched'] += 1
      caption = side
    elif not caption:
      return base.Skipped(record_id, 'no caption (no describing tags, not in --captions)')
    return base.Entry(
      id=record_id,
      group=group,
      image=lambda max_side: ingest.encode_png(_image(ds, max_side)),
      caption=caption,
      labels=labels,
    )

  return base.grouped_source(
    (entry(path) for path in paths),
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    captions=caption_info,
    warnings=notes,
  )
