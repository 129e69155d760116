"""`reports`: free-text radiology reports and their study images (MIMIC-CXR layout).

Reads reports `INPUT/files/pXX/pXXXXXXXX/sXXXXXXXX.txt` (MIMIC-CXR) and images
`IMAGES/files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg` (MIMIC-CXR-JPG; --images
defaults to --input). Only the folder structure matters, not the names:

- A report is a .txt file found anywhere below --input except at its top
  (where MIMIC keeps LICENSE.txt and the like); its study is the file stem,
  its patient the folder holding it.
- A study folder is a folder below --images that directly holds a .jpg,
  .jpeg, .png, .tif, .tiff, .bmp or .dcm file; its study is the folder name,
  its patient the folder holding it. Reports and images are matched by
  (patient, study), wherever each tree puts them.
- One record per image file (one of those extensions) in a study folder, id
  `patient/study/file stem` (e.g. p10000032/s50414267/02aa804e-...), group =
  patient, so no patient spans two splits (hashed with --seed; MIMIC's
  official split is not used). Other files there (a web mirror's index.html)
  are ignored.
- Caption: the first section named in --sections (default
  'impression,findings') that has text. A section starts at a header, an
  upper-case name followed by ':' at the start of a line ('FINDINGS:',
  'WET READ:'), and runs to the next header; a name used twice has both
  texts joined. Whitespace is collapsed; de-identification blanks ('___')
  are kept.
- DICOM images (MIMIC-CXR's originals) are read by the dicom format's rules
  (window, MONOCHROME1 inversion, compressed transfer syntaxes; see
  medclip_jax.data.formats.dicom); their tags are not used.
- Skipped, with a reason: a study whose report has no image ('no image',
  id `patient/study`); each image of a study that has no report ('no
  report'), whose report is empty ('empty report') or has none of the
  sections (e.g. 'no impression or findings section'); and every image or
  caption failure (see `base.convert` and the dicom format).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator

from medclip_jax.data import ingest
from medclip_jax.data.formats import base
from medclip_jax.data.formats import dicom

_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.tif', '.tiff', '.bmp', '.dcm')
_HEADER = re.compile(r'^[ \t]*([A-Z][A-Z ()/&-]*):', re.MULTILINE)
_SECTION_NAME = re.compile(r'[a-z][a-z ()/&-]*')


def _section_names(sections: str) -> list[str]:
  """--sections as lower-case names, in order of preference."""
  names = [' '.join(s.lower().split()) for s in sections.split(',') if s.strip()]
  bad = [n for n in names if not _SECTION_NAME.fullmatch(n)]
  if not names or bad:
    raise base.OptionError(
      f'--sections={sections!r} must list report section names, comma-separated, by '
      'preference (e.g. impression,findings): letters, spaces and ()/&- only, matched '
      'without regard to case against the headers ("IMPRESSION:") of the reports.'
    )
  return list(dict.fromkeys(names))


def _sections(report: str) -> dict[str, str]:
  """Section name (lower case, single spaces) -> its text."""
  headers = list(_HEADER.finditer(report))
  found: dict[str, str] = {}
  for header, following in zip(headers, [*headers[1:], None]):
    name = ' '.join(header.group(1).lower().split())
    text = report[header.end() : following.start() if following else len(report)]
    found[name] = f'{found[name]} {text}' if name in found else text
  return found


def _caption(path: str, sections: list[str]) -> tuple[str | None, str]:
  """The caption of report `path`, or None and the reason there is none."""
  try:
    with open(path, encoding='utf-8', errors='surrogateescape') as f:
      report = f.read()
  except OSError:
    return None, 'unreadable report'
  if not report.strip():
    return None, 'empty report'
  found = _sections(report)
  for name in sections:
    if found.get(name, '').strip():
      return found[name], ''
  names = sections[0] if len(sections) == 1 else f'{", ".join(sections[:-1])} or {sections[-1]}'
  return None, f'no {names} section'


def _scan(root: str) -> tuple[dict, dict]:
  """Reports and study images below `root`: (patient, study) -> sorted paths.

  Hidden files and folders are ignored; nothing is read.
  """
  reports: dict[tuple[str, str], list[str]] = {}
  studies: dict[tuple[str, str], list[str]] = {}
  for directory, folders, files in os.walk(root):
    folders[:] = sorted(f for f in folders if not f.startswith('.'))
    if directory == root:  # os.walk yields `root` itself first, as given
      continue
    files = sorted(f for f in files if not f.startswith('.'))
    patient = os.path.basename(directory)
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() == '.txt':
        reports.setdefault((patient, stem), []).append(os.path.join(directory, name))
    images = [f for f in files if os.path.splitext(f)[1].lower() in _IMAGE_EXTENSIONS]
    if images:
      key = (os.path.basename(os.path.dirname(directory)), os.path.basename(directory))
      studies.setdefault(key, []).extend(os.path.join(directory, f) for f in images)
  return reports, studies


def source(
  input: str | None = None,  # pylint: disable=redefined-builtin
  images: str = '',
  sections: str = 'impression,findings',
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> base.Source:
  """Reports (INPUT/**/patient/study.txt) and images (IMAGES/**/patient/study/*)."""
  base.check_real_options(
    'reports', input, True, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  names = _section_names(sections)
  images = images or input
  if not os.path.isdir(images):
    raise base.OptionError(f'--images={images!r} is not a directory (the study image tree).')
  reports, studies = _scan(input)
  if not reports:
    raise base.OptionError(
      f'format reports found no reports under --input={input!r}: expected one .txt file per '
      'study inside its patient folder, as in MIMIC-CXR files/p10/p10000032/s50414267.txt.'
    )
  if not os.path.samefile(images, input):
    studies = _scan(images)[1]

  def study_entries(patient, study, paths, caption, reason) -> Iterator:
    """One entry per file of a study: its caption, or Skipped with `reason`."""
    for path in paths:
      stem, ext = os.path.splitext(os.path.basename(path))
      record_id = base.text(f'{patient}/{study}/{stem}')
      if caption is None:
        yield base.Skipped(record_id, reason)
      else:
        image = functools.partial(dicom.load_image, path) if ext.lower() == '.dcm' else path
        yield base.Entry(record_id, base.text(patient), image, caption, labels={})

  def entries():
    for patient, study in sorted(reports.keys() | studies.keys()):
      paths = studies.get((patient, study), [])
      if (patient, study) not in reports:
        yield from study_entries(patient, study, paths, None, 'no report')
      for report in reports.get((patient, study), []):
        if not paths:
          yield base.Skipped(base.text(f'{patient}/{study}'), 'no image')
        else:
          yield from study_entries(patient, study, paths, *_caption(report, names))

  return base.grouped_source(
    entries(),
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    images=base.path_text(images),
    sections=names,
  )
