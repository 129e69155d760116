"""Tests of the `pubmedvision` and `reports` formats of medclip_jax.data.prepare.

`write_pubmedvision_fixture` and `write_reports_fixture` write small messy
datasets and return (prepare keyword arguments, expected converted ids,
expected skipped {id: reason}); other tests may import them to prepare and
train on real-format data:

    kwargs, ids, skipped = write_reports_fixture(tmp_path)
    prepare.prepare('reports', output, **kwargs)
"""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data.formats import pubmedvision
from tests.test_dicom import _dataset
from tests.test_dicom import _file_bytes
from tests.test_dicom import _ramp
from tests.test_ingest import MAX_SIDE
from tests.test_ingest import _all_records
from tests.test_ingest import _assert_groups_in_one_split
from tests.test_ingest import _bad_images
from tests.test_ingest import _good_images
from tests.test_ingest import _jpeg
from tests.test_ingest import _noise
from tests.test_ingest import _png
from tests.test_ingest import _write

_OPTIONS = {'max_side': MAX_SIDE, 'val_fraction': 0.3, 'test_fraction': 0.3}


def _prepare(format_name, out, kwargs, **overrides):
  info = prepare.prepare(format_name, str(out), **{**kwargs, **overrides})
  assert info == records.read_dataset_info(str(out))
  by_split = _all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  assert sum(v['count'] for v in info['splits'].values()) == info['converted']
  _assert_groups_in_one_split(by_split)
  return info, {r['id']: r for recs in by_split.values() for r in recs}


def _skipped(info):
  skipped = {s['id']: s['reason'] for s in info['skipped']}
  assert len(skipped) == len(info['skipped'])  # no id skipped twice
  return skipped


def _assert_nothing_written(out):
  assert not os.path.exists(out / records.DATASET_INFO)
  assert not [n for n in os.listdir(out) if 'array_record' in n]


# ----------------------------------------------------------------------------
# pubmedvision


def _vqa(record_id, images, answer, modality='CT', body_part='Chest'):
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
  for i, (name, image) in enumerate(_good_images().items()):
    _write(images, name, image)
    # Every good record has two or three images; only the first is used.
    extra = [f'images/extra_{i}_{k}.png' for k in range(1 + i % 2)]
    for path in extra:
      _write(images, os.path.basename(path), _png(_noise('L', seed=100 + i)))
    paths = [f'images/{name}', *extra]
    data.append(_vqa(f'Alignment_VQA_{i}', paths, f'A scan number {i}.', body_part=parts[i % 3]))
    good.append(f'Alignment_VQA_{i}')
  for i in range(7, 13):
    _write(images, f'plain_{i}.png', _png(_noise('RGB', seed=i)))
    paths = [f'images/plain_{i}.png']
    data.append(_vqa(f'Alignment_VQA_{i}', paths, f'MRI number {i}.', 'MRI', parts[i % 3]))
    good.append(f'Alignment_VQA_{i}')
  # Placeholders and markdown are stripped; two records share one image.
  data.append(_vqa('Alignment_VQA_13', ['images/plain_7.png'], '<image>\n# Findings\n**Mass**'))
  good.append('Alignment_VQA_13')
  _write(images, 'utf8.png', _png(_noise('L', seed=3)))
  data.append(_vqa('Alignment_VQA_14', ['images/utf8.png'], 'bad BADBYTES bytes'))
  good.append('Alignment_VQA_14')
  for i, (name, (image, reason)) in enumerate(_bad_images().items()):
    _write(images, name, image)
    data.append(_vqa(f'Bad_{i}', [f'images/{name}', 'images/mode_l.png'], 'A caption.'))
    bad[f'Bad_{i}'] = reason
  planted = {
    'Bad_empty_caption': (['images/plain_8.png'], ' \n\t ', 'empty caption'),
    'Bad_only_placeholder': (['images/plain_8.png'], '<image>', 'empty caption'),
    'Bad_no_image': ([], 'A caption.', 'no image'),
    'Bad_image_string': ('images/plain_8.png', 'A caption.', 'image is not a list'),
    'Bad_image_number': ([7], 'A caption.', 'image is not a path'),
  }
  for record_id, (paths, answer, reason) in planted.items():
    data.append(_vqa(record_id, paths, answer))
    bad[record_id] = reason
  no_answer = _vqa('Bad_no_gpt', ['images/plain_8.png'], '')
  no_answer['conversations'] = no_answer['conversations'][:1]
  data.append(no_answer)
  bad['Bad_no_gpt'] = 'no gpt turn'
  data.append(42)
  bad[f'record {len(data)}'] = 'not a JSON object'
  data.append(_vqa('Alignment_VQA_1', ['images/plain_9.png'], 'The same id again.'))
  bad['Alignment_VQA_1'] = 'duplicate id'
  path = os.path.join(directory, 'PubMedVision_Alignment_VQA.json')
  with open(path, 'wb') as f:
    f.write(json.dumps(data, indent=1).encode().replace(b'BADBYTES', b'\xff\xfe'))
  kwargs = dict(input=path, max_bad_fraction=0.5, **_OPTIONS)
  return kwargs, sorted(good), bad


def test_pubmedvision_converts_good_and_reports_bad(tmp_path):
  kwargs, good, bad = write_pubmedvision_fixture(tmp_path / 'pmv')
  info, recs = _prepare('pubmedvision', tmp_path / 'out', kwargs)
  assert info['converted'] == len(good) == 15 and sorted(recs) == good
  assert _skipped(info) == bad and len(bad) == 13
  assert info['repaired'] == [
    {'id': 'Alignment_VQA_14', 'reason': 'invalid UTF-8 in caption replaced'}
  ]
  assert info['sample'] == {'requested': 0, 'available': 28, 'taken': 28}
  assert info['extra_images_ignored'] == 10 + 5  # good records, then the bad ones
  assert info['labels'] == {'body_part': ['Abdomen', 'Brain', 'Chest'], 'modality': ['CT', 'MRI']}
  assert recs['Alignment_VQA_1']['labels'] == {'modality': 'CT', 'body_part': 'Brain'}
  assert recs['Alignment_VQA_1']['caption'] == 'A scan number 1.'
  assert recs['Alignment_VQA_13']['caption'] == 'Findings Mass'
  assert recs['Alignment_VQA_14']['caption'] == 'bad \ufffd\ufffd bytes'
  # Records of one image share a group, so a figure never spans splits.
  assert (
    recs['Alignment_VQA_13']['group']
    == recs['Alignment_VQA_7']['group']
    == (os.path.join('images', 'plain_7.png'))
  )
  for rec in recs.values():
    assert max(Image.open(io.BytesIO(rec['image'])).size) <= MAX_SIDE
  assert Image.open(io.BytesIO(recs['Alignment_VQA_6']['image'])).size == (MAX_SIDE, MAX_SIDE)
  assert len({r['group'] for r in recs.values()}) == 14
  assert sum(bool(v['count']) for v in info['splits'].values()) >= 2


def _sampling_file(directory, name, count=40, reverse=False):
  _write(os.path.join(directory, 'images'), 'a.png', _png(_noise('L')))  # found in images/
  lines = [json.dumps(_vqa(f'id_{i}', ['a.png'], f'caption {i}')) for i in range(count)]
  path = os.path.join(directory, name)
  with open(path, 'w') as f:
    f.write('\n'.join(lines[::-1] if reverse else lines) + '\n')
  return path


def _sampled_ids(path, **options):
  out = pubmedvision.source(input=path, max_side=MAX_SIDE, **options)
  ids = [r['id'] for r in out.records]
  return ids, out.info['sample']


def test_pubmedvision_sample_is_seeded_and_independent_of_file_order(tmp_path):
  path = _sampling_file(tmp_path, 'a.jsonl')
  ids, sample = _sampled_ids(path, sample=8, seed=0)
  assert len(ids) == 8 and sample == {'requested': 8, 'available': 40, 'taken': 8}
  assert ids == sorted(ids, key=lambda i: int(i.split('_')[1]))  # kept in file order
  assert _sampled_ids(path, sample=8, seed=0)[0] == ids
  assert set(_sampled_ids(path, sample=8, seed=1)[0]) != set(ids)
  reversed_path = _sampling_file(tmp_path, 'reversed.jsonl', reverse=True)
  assert set(_sampled_ids(reversed_path, sample=8, seed=0)[0]) == set(ids)
  assert set(_sampled_ids(path, sample=4, seed=0)[0]) < set(ids)
  all_ids, sample = _sampled_ids(path, sample=100, seed=0)
  assert len(all_ids) == 40 and sample == {'requested': 100, 'available': 40, 'taken': 40}


def test_pubmedvision_sample_counts_bad_records(tmp_path):
  kwargs, good, bad = write_pubmedvision_fixture(tmp_path / 'pmv')
  info, recs = _prepare('pubmedvision', tmp_path / 'out', kwargs, sample=10, max_bad_fraction=1)
  assert info['converted'] + len(info['skipped']) == 10
  assert set(recs) <= set(good) and set(_skipped(info)) <= set(bad)


def test_pubmedvision_bad_inputs(tmp_path):
  kwargs, _, _ = write_pubmedvision_fixture(tmp_path / 'pmv')
  with pytest.raises(prepare.TooManyBadRecords, match='13 of 28 pubmedvision inputs'):
    prepare.prepare('pubmedvision', str(tmp_path / 'out'), **{**kwargs, 'max_bad_fraction': 0.1})
  _assert_nothing_written(tmp_path / 'out')
  (tmp_path / 'other.json').write_text(json.dumps([{'id': 'x', 'image': ['a.png']}]))
  with pytest.raises(prepare.OptionError, match="its first record has no 'conversations'"):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(tmp_path / 'other.json'))
  (tmp_path / 'data.csv').write_text('id,image\n')
  with pytest.raises(prepare.OptionError, match=r'must be the \.json'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(tmp_path / 'data.csv'))
  with pytest.raises(prepare.OptionError, match='sample must be >= 0'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=kwargs['input'], sample=-1)


# ----------------------------------------------------------------------------
# reports


def _report(findings=None, impression=None, indication='___F with cough.'):
  """A MIMIC-CXR style report (lines indented by one space, as in MIMIC)."""
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
  _write(reports, 'LICENSE.txt', b'Not a report.\n')  # ignored at the top of the tree
  _write(images, 'metadata.csv', b'dicom_id,study_id\n')

  def study(patient, number, report, files, reason=None):
    folder = os.path.join('files', f'p{patient[:2]}', f'p{patient}')
    if report is not None:
      _write(os.path.join(reports, folder), f's{number}.txt', report)
    for name, data in files.items():
      record_id = f'p{patient}/s{number}/{os.path.splitext(name)[0]}'
      if data is None:  # a dangling link: listed, but the file is missing
        os.makedirs(os.path.join(images, folder, f's{number}'), exist_ok=True)
        os.symlink('gone.png', os.path.join(images, folder, f's{number}', name))
      else:
        _write(os.path.join(images, folder, f's{number}'), name, data)
      if reason:
        bad[record_id] = reason
      else:
        good.append(record_id)

  modes = _good_images()
  both = _report('Lungs clear, patient one.', 'No acute process, patient one.')
  study('10000001', 50000001, both, {n: modes[n] for n in ('mode_1.png', 'mode_i16.png')})
  # A JPEG and a PNG with one stem: the second by name is a duplicate id.
  study(
    '10000001',
    50000001,
    None,
    {'mode_l.jpg': _jpeg(_noise('L')), 'mode_l.png': modes['mode_l.png']},
  )
  good.remove('p10000001/s50000001/mode_l')
  bad['p10000001/s50000001/mode_l'] = 'duplicate id'
  study(
    '10000001',
    50000002,
    _report('Heart normal.'),
    {n: modes[n] for n in ('mode_p.png', 'mode_rgba.png')},
  )
  empty_impression = _report('Small left effusion.', impression='  ')
  study(
    '10000002', 50000003, empty_impression, {n: modes[n] for n in ('mode_cmyk.jpg', 'huge.jpg')}
  )
  bad_bytes = _report('x', 'Bad BADBYTES bytes, ___ kept.').replace(b'BADBYTES', b'\xff\xfe')
  study('10000002', 50000004, bad_bytes, {'a.png': _png(_noise('L')), 'b.png': _png(_noise('P'))})
  study('10000003', 50000005, both, {'c.png': _png(_noise('RGB'))})
  for name, (data, reason) in _bad_images().items():
    # Renamed so that truncated.png and truncated.jpg get different ids.
    stem, ext = os.path.splitext(name)
    study('10000003', 50000005, None, {f'{stem}_{ext[1:]}{ext}': data}, reason)
  study('10000003', 50000005, None, {'scan.dcm': b'DICM'}, 'not a DICOM file')
  # MIMIC-CXR's original DICOMs convert like the JPGs.
  chest = _dataset('cxr', _ramp(np.uint16, 0, 4095), 'MONOCHROME1', bits=12)
  study('10000020', 50000020, _report('Clear.', 'Normal chest.'), {'x.dcm': _file_bytes(chest)})
  no_sections = _report(indication='Cough.')
  study(
    '10000004',
    50000006,
    no_sections,
    {'d.png': _png(_noise('L'))},
    'no impression or findings section',
  )
  study('10000004', 50000007, b' \n \n', {'e.png': _png(_noise('L'))}, 'empty report')
  study('10000005', 50000008, _report('Clear.'), {})
  bad['p10000005/s50000008'] = 'no image'
  study('10000005', 50000009, None, {'f.png': _png(_noise('L'))}, 'no report')
  for k in range(6):
    report = _report(f'Findings of patient {k}.', f'Impression of patient {k}.')
    files = {f'view{v}.png': _png(_noise('L', seed=10 * k + v)) for v in range(2)}
    study(f'1000001{k}', 50000010 + k, report, files)
  kwargs = dict(input=reports, images=images, max_bad_fraction=0.5, **_OPTIONS)
  return kwargs, sorted(good), bad


def _caption_of(recs, study):
  captions = {r['caption'] for i, r in recs.items() if i.startswith(study + '/')}
  assert len(captions) == 1, captions
  return captions.pop()


def test_reports_converts_good_and_reports_bad(tmp_path):
  kwargs, good, bad = write_reports_fixture(tmp_path / 'mimic')
  info, recs = _prepare('reports', tmp_path / 'out', kwargs)
  assert info['converted'] == len(good) == 23 and sorted(recs) == good
  assert _skipped(info) == bad and len(bad) == 11
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
  info, recs = _prepare('reports', tmp_path / 'out', kwargs, sections=' FINDINGS ')
  assert info['sections'] == ['findings']
  assert _caption_of(recs, 'p10000001/s50000001') == 'Lungs clear, patient one.'
  assert _skipped(info)['p10000004/s50000006/d'] == 'no findings section'
  info, recs = _prepare('reports', tmp_path / 'out2', kwargs, sections='impression,indication')
  assert _caption_of(recs, 'p10000001/s50000002') == '___F with cough.'
  assert _caption_of(recs, 'p10000001/s50000001') == 'No acute process, patient one.'
  assert _caption_of(recs, 'p10000004/s50000006') == 'Cough.'
  info, recs = _prepare(
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
  _write(patient, 's1.txt', _report('Clear.'))
  _write(patient / 's1', 'frontal.jpg', _jpeg(_noise('L')))
  _write(patient / 's2', 'lateral.jpg', _jpeg(_noise('L')))
  info = prepare.prepare(
    'reports', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=1
  )
  assert info['converted'] == 1 and info['images'] == str(tmp_path)
  assert info['skipped'] == [{'id': 'p10000001/s2/lateral', 'reason': 'no report'}]


def test_reports_bad_inputs(tmp_path):
  kwargs, _, _ = write_reports_fixture(tmp_path / 'mimic')
  with pytest.raises(prepare.TooManyBadRecords, match='11 of 34 reports inputs'):
    prepare.prepare('reports', str(tmp_path / 'out'), **{**kwargs, 'max_bad_fraction': 0.1})
  _assert_nothing_written(tmp_path / 'out')
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


def test_pubmedvision_json_is_streamed_in_chunks(tmp_path, monkeypatch):
  from medclip_jax.data.formats import base  # pylint: disable=import-outside-toplevel

  kwargs, good, bad = write_pubmedvision_fixture(tmp_path / 'pmv')
  whole, _ = _prepare('pubmedvision', tmp_path / 'whole', kwargs)
  monkeypatch.setattr(base, '_CHUNK', 5)  # items, numbers and strings cut across reads
  streamed, recs = _prepare('pubmedvision', tmp_path / 'streamed', kwargs)
  assert streamed == {**whole, 'splits': streamed['splits']} and sorted(recs) == good
  assert {s: v['count'] for s, v in streamed['splits'].items()} == {
    s: v['count'] for s, v in whole['splits'].items()
  }
  broken = tmp_path / 'broken.json'
  broken.write_text('[{"id": "a", "image": ["x.png"], "conversations": []},\n{"id": "b" ')
  with pytest.raises(prepare.OptionError, match='not valid JSON.*item 2'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(broken))
