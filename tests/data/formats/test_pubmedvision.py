"""Tests of the pubmedvision format: the messy fixture converts exactly, seeded sampling,
bad inputs, and the JSON read in chunks."""

import io
import json
import os

import pytest
from PIL import Image

from medclip_jax.data import prepare
from medclip_jax.data.formats import base
from medclip_jax.data.formats import pubmedvision
from tests.helpers import MAX_SIDE
from tests.helpers import assert_nothing_written
from tests.helpers import noise
from tests.helpers import png
from tests.helpers import prepare_checked
from tests.helpers import skipped_by_id
from tests.helpers import vqa_record
from tests.helpers import write
from tests.helpers import write_pubmedvision_fixture


def test_pubmedvision_converts_good_and_reports_bad(tmp_path):
  kwargs, good, bad = write_pubmedvision_fixture(tmp_path / 'pmv')
  info, recs = prepare_checked('pubmedvision', tmp_path / 'out', kwargs)
  assert info['converted'] == len(good) == 15 and sorted(recs) == good
  assert skipped_by_id(info) == bad and len(bad) == 13
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
  write(os.path.join(directory, 'images'), 'a.png', png(noise('L')))  # found in images/
  lines = [json.dumps(vqa_record(f'id_{i}', ['a.png'], f'caption {i}')) for i in range(count)]
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
  info, recs = prepare_checked(
    'pubmedvision', tmp_path / 'out', kwargs, sample=10, max_bad_fraction=1
  )
  assert info['converted'] + len(info['skipped']) == 10
  assert set(recs) <= set(good) and set(skipped_by_id(info)) <= set(bad)


def test_pubmedvision_bad_inputs(tmp_path):
  kwargs, _, _ = write_pubmedvision_fixture(tmp_path / 'pmv')
  with pytest.raises(prepare.TooManyBadRecords, match='13 of 28 pubmedvision inputs'):
    prepare.prepare('pubmedvision', str(tmp_path / 'out'), **{**kwargs, 'max_bad_fraction': 0.1})
  assert_nothing_written(tmp_path / 'out')
  (tmp_path / 'other.json').write_text(json.dumps([{'id': 'x', 'image': ['a.png']}]))
  with pytest.raises(prepare.OptionError, match="its first record has no 'conversations'"):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(tmp_path / 'other.json'))
  (tmp_path / 'data.csv').write_text('id,image\n')
  with pytest.raises(prepare.OptionError, match=r'must be the \.json'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(tmp_path / 'data.csv'))
  with pytest.raises(prepare.OptionError, match='sample must be >= 0'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=kwargs['input'], sample=-1)


def test_pubmedvision_json_is_streamed_in_chunks(tmp_path, monkeypatch):
  kwargs, good, bad = write_pubmedvision_fixture(tmp_path / 'pmv')
  whole, _ = prepare_checked('pubmedvision', tmp_path / 'whole', kwargs)
  monkeypatch.setattr(base, '_CHUNK', 5)  # items, numbers and strings cut across reads
  streamed, recs = prepare_checked('pubmedvision', tmp_path / 'streamed', kwargs)
  assert streamed == {**whole, 'splits': streamed['splits']} and sorted(recs) == good
  assert {s: v['count'] for s, v in streamed['splits'].items()} == {
    s: v['count'] for s, v in whole['splits'].items()
  }
  broken = tmp_path / 'broken.json'
  broken.write_text('[{"id": "a", "image": ["x.png"], "conversations": []},\n{"id": "b" ')
  with pytest.raises(prepare.OptionError, match='not valid JSON.*item 2'):
    prepare.prepare('pubmedvision', str(tmp_path / 'o'), input=str(broken))
