"""Tests of the reports format (MIMIC-CXR reports and images): the messy fixture converts
exactly, the --sections flag, images defaulting to --input, and bad inputs."""

import io

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import prepare
from tests.helpers import MAX_SIDE
from tests.helpers import assert_nothing_written
from tests.helpers import jpeg
from tests.helpers import mimic_report
from tests.helpers import noise
from tests.helpers import prepare_checked
from tests.helpers import skipped_by_id
from tests.helpers import write
from tests.helpers import write_reports_fixture


def _caption_of(recs, study):
  captions = {r['caption'] for i, r in recs.items() if i.startswith(study + '/')}
  assert len(captions) == 1, captions
  return captions.pop()


def test_reports_converts_good_and_reports_bad(tmp_path):
  kwargs, good, bad = write_reports_fixture(tmp_path / 'mimic')
  info, recs = prepare_checked('reports', tmp_path / 'out', kwargs)
  assert info['converted'] == len(good) == 23 and sorted(recs) == good
  assert skipped_by_id(info) == bad and len(bad) == 11
  assert info['repaired'] == [
    {'id': f'p10000002/s50000004/{n}', 'reason': 'invalid UTF-8 in caption replaced'} for n in 'ab'
  ]
  assert info['sections'] == ['impression', 'findings'] and info['labels'] == {}
  assert _caption_of(recs, 'p10000001/s50000001') == 'No acute process, patient one.'
  assert _caption_of(recs, 'p10000001/s50000002') == 'Heart normal.'  # no impression
  assert _caption_of(recs, 'p10000002/s50000003') == 'Small left effusion.'  # empty impression
  assert _caption_of(recs, 'p10000002/s50000004') == 'Bad \ufffd\ufffd bytes, ___ kept.'
  assert recs['p10000001/s50000002/mode_p']['group'] == 'p10000001'
  assert len({r['group'] for r in recs.values()}) == 10
  assert sum(bool(v['count']) for v in info['splits'].values()) >= 2
  for rec in recs.values():
    assert max(Image.open(io.BytesIO(rec['image'])).size) <= MAX_SIDE
  huge = Image.open(io.BytesIO(recs['p10000002/s50000003/huge']['image']))
  assert huge.size == (MAX_SIDE, MAX_SIDE)
  # The DICOM's raw values rise left to right; MONOCHROME1 shows them darkening.
  chest = np.asarray(Image.open(io.BytesIO(recs['p10000020/s50000020/x']['image'])))
  assert chest.ndim == 2 and chest[:, 0].mean() > chest[:, -1].mean() + 100


def test_reports_sections_flag(tmp_path):
  kwargs, _, _ = write_reports_fixture(tmp_path / 'mimic')
  info, recs = prepare_checked('reports', tmp_path / 'out', kwargs, sections=' FINDINGS ')
  assert info['sections'] == ['findings']
  assert _caption_of(recs, 'p10000001/s50000001') == 'Lungs clear, patient one.'
  assert skipped_by_id(info)['p10000004/s50000006/d'] == 'no findings section'
  info, recs = prepare_checked(
    'reports', tmp_path / 'out2', kwargs, sections='impression,indication'
  )
  assert _caption_of(recs, 'p10000001/s50000002') == '___F with cough.'
  assert _caption_of(recs, 'p10000001/s50000001') == 'No acute process, patient one.'
  assert _caption_of(recs, 'p10000004/s50000006') == 'Cough.'
  info, recs = prepare_checked(
    'reports', tmp_path / 'out3', kwargs, sections='summary,conclusion,final', max_bad_fraction=1
  )
  assert not recs
  assert {'id': 'p10000004/s50000006/d', 'reason': 'no summary, conclusion or final section'} in (
    info['skipped']
  )
  for sections in ('', ' , ', 'impression:', 'findings;impression'):
    with pytest.raises(prepare.OptionError, match='--sections'):
      prepare.prepare('reports', str(tmp_path / 'o'), **{**kwargs, 'sections': sections})


def test_reports_images_default_to_input(tmp_path):
  patient = tmp_path / 'files' / 'p10' / 'p10000001'
  write(patient, 's1.txt', mimic_report('Clear.'))
  write(patient / 's1', 'frontal.jpg', jpeg(noise('L')))
  write(patient / 's2', 'lateral.jpg', jpeg(noise('L')))
  info = prepare.prepare(
    'reports', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=1
  )
  assert info['converted'] == 1 and info['images'] == str(tmp_path)
  assert info['skipped'] == [{'id': 'p10000001/s2/lateral', 'reason': 'no report'}]


def test_reports_ignores_files_that_are_not_images(tmp_path):
  # A wget mirror leaves an index.html in every folder.
  patient = tmp_path / 'files' / 'p10' / 'p10000001'
  for folder in (tmp_path, tmp_path / 'files', patient.parent, patient):
    write(folder, 'index.html', b'<html>Index of /</html>')
  write(patient, 's1.txt', mimic_report('Clear.'))
  write(patient / 's1', 'frontal.jpg', jpeg(noise('L')))
  write(patient / 's1', 'index.html', b'<html>Index of s1</html>')
  write(patient, 's2.txt', mimic_report('Clear.'))
  write(patient / 's2', 'index.html', b'<html>Index of s2</html>')  # not a study folder
  info = prepare.prepare(
    'reports', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=1
  )
  assert info['converted'] == 1
  assert info['skipped'] == [{'id': 'p10000001/s2', 'reason': 'no image'}]


def test_reports_bad_inputs(tmp_path):
  kwargs, _, _ = write_reports_fixture(tmp_path / 'mimic')
  with pytest.raises(prepare.TooManyBadRecords, match='11 of 34 reports inputs'):
    prepare.prepare('reports', str(tmp_path / 'out'), **{**kwargs, 'max_bad_fraction': 0.1})
  assert_nothing_written(tmp_path / 'out')
  with pytest.raises(prepare.OptionError, match='found no reports'):
    prepare.prepare('reports', str(tmp_path / 'o'), input=kwargs['images'])
  with pytest.raises(prepare.OptionError, match='--images=.* is not a directory'):
    prepare.prepare('reports', str(tmp_path / 'o'), **{**kwargs, 'images': str(tmp_path / 'x')})
  with pytest.raises(prepare.OptionError, match='must be a directory'):
    prepare.prepare(
      'reports',
      str(tmp_path / 'o'),
      input=str(tmp_path / 'mimic' / 'mimic-cxr-reports' / 'LICENSE.txt'),
    )
