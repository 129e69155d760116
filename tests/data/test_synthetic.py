"""Tests of the synthetic generator (medclip_jax.data.synthetic) and the dataset it prepares:
its info, labels matching captions, disjoint splits, determinism, every combination, the
radiological side and the image size."""

import collections
import io
import os

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data import synthetic
from tests.helpers import split_records

COUNTS = {'train': 40, 'val': 10, 'test': 10}
SIZE = 32


def _prepare(output, seed=0):
  return prepare.prepare(
    'synthetic',
    str(output),
    seed=seed,
    num_train=COUNTS['train'],
    num_val=COUNTS['val'],
    num_test=COUNTS['test'],
    image_size=SIZE,
  )


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  output = tmp_path_factory.mktemp('synthetic')
  info = _prepare(output)
  return output, info


def _dir_bytes(path):
  return {name: open(os.path.join(path, name), 'rb').read() for name in sorted(os.listdir(path))}


def test_dataset_info(dataset):
  data_dir, info = dataset
  assert records.read_dataset_info(str(data_dir)) == info
  assert info['format'] == 'synthetic'
  assert {s: info['splits'][s]['count'] for s in records.SPLITS} == COUNTS
  assert info['converted'] == sum(COUNTS.values())
  assert info['skipped'] == []
  assert info['image_size'] == SIZE and info['seed'] == 0
  for split in records.SPLITS:
    files = [os.path.basename(p) for p in records.split_files(str(data_dir), split)]
    assert info['splits'][split]['files'] == files
  assert info['labels'] == synthetic.LABELS
  assert set(info['labels']) == {'modality', 'body_part', 'finding', 'laterality'}
  assert len(info['labels']['body_part']) >= 6
  assert len(info['labels']['finding']) >= 4
  assert 'normal' in info['labels']['finding']
  assert info['labels']['laterality'] == ['left', 'none', 'right']
  length = info['caption_length']
  assert 0 < length['min'] <= length['mean'] <= length['max'] < 25


def test_records_decode_and_match_their_labels(dataset):
  data_dir, info = dataset
  for split in records.SPLITS:
    recs = split_records(data_dir, split)
    for name in synthetic.LABELS:
      counts = collections.Counter(r['labels'][name] for r in recs)
      assert info['label_counts'][split][name] == dict(sorted(counts.items()))
    assert sorted(r['id'] for r in recs) == [
      f'synthetic-{split}-{i:06d}' for i in range(COUNTS[split])
    ]
    for r in recs:
      assert r['group'] == r['id']
      img = Image.open(io.BytesIO(r['image']))
      assert img.format == 'PNG' and img.mode == 'L'
      assert img.size == (SIZE, SIZE)
      assert np.asarray(img).std() > 5, r['id']  # not blank
      labels, cap = r['labels'], r['caption']
      assert set(labels) == set(synthetic.LABELS)
      for name, value in labels.items():
        assert value in synthetic.LABELS[name]
      assert cap.strip() and cap[0].isupper() and cap.endswith('.')
      for key in ('modality', 'body_part', 'finding'):
        for value in synthetic.LABELS[key]:
          assert synthetic.names(cap, key, value) == (value == labels[key]), (key, value, cap)
      side = labels['laterality']
      for word in ('left', 'right'):
        assert synthetic.names(cap, 'laterality', word) == (word == side), cap
      if labels['finding'] == 'normal' or labels['body_part'] == 'spine':
        assert side == 'none'
      else:
        assert side in ('left', 'right')


def test_splits_are_disjoint(dataset):
  data_dir, _ = dataset
  seen_ids, seen_images, seen_groups = set(), set(), set()
  for split in records.SPLITS:
    recs = split_records(data_dir, split)
    ids = {r['id'] for r in recs}
    images = {r['image'] for r in recs}
    groups = {r['group'] for r in recs}
    assert len(images) == len(recs)
    assert not ids & seen_ids
    assert not images & seen_images
    assert not groups & seen_groups
    seen_ids |= ids
    seen_images |= images
    seen_groups |= groups


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
  data_dir, _ = dataset
  _prepare(tmp_path / 'again', seed=0)
  assert _dir_bytes(tmp_path / 'again') == _dir_bytes(data_dir)
  _prepare(tmp_path / 'other', seed=1)
  first = split_records(data_dir, 'train')
  other = split_records(tmp_path / 'other', 'train')
  assert [r['id'] for r in first] == [r['id'] for r in other]
  assert all(a['image'] != b['image'] for a, b in zip(first, other))


def test_examples_do_not_depend_on_generation_order():
  some = list(synthetic.generate('val', 6, seed=3, image_size=SIZE))
  assert synthetic.make_example('val', 5, seed=3, image_size=SIZE) == some[5]


def test_every_combination_renders():
  for m in synthetic.MODALITIES:
    for b in synthetic.BODY_PARTS:
      for f in synthetic.FINDINGS:
        side = 'none' if f == 'normal' or b == 'spine' else 'left'
        labels = dict(modality=m, body_part=b, finding=f, laterality=side)
        img, place = synthetic.render(labels, np.random.default_rng(0), SIZE)
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
        assert (place is None) == (f == 'normal')
        assert synthetic.caption(np.random.default_rng(0), labels, place)


@pytest.mark.parametrize('part', ['brain', 'chest', 'abdomen', 'pelvis'])
def test_findings_are_drawn_on_the_radiological_side(part):
  """The patient's right is on the image left."""
  for modality in synthetic.MODALITIES:
    for finding, tissue in (('mass', synthetic.MASS), ('hemorrhage', synthetic.BLOOD)):
      for side in ('left', 'right'):
        for seed in range(3):
          labels = dict(modality=modality, body_part=part, finding=finding, laterality=side)
          lab, _ = synthetic.tissue_map(labels, np.random.default_rng(seed), SIZE)
          columns = np.nonzero(lab == tissue)[1]
          assert len(columns), labels
          on_left = columns.mean() < lab.shape[1] / 2
          assert on_left == (side == 'right'), labels


def test_image_size_option(tmp_path):
  info = prepare.prepare(
    'synthetic', str(tmp_path), num_train=2, num_val=1, num_test=1, image_size=33
  )
  assert info['image_size'] == 33
  rec = split_records(tmp_path, 'train')[0]
  assert Image.open(io.BytesIO(rec['image'])).size == (33, 33)
