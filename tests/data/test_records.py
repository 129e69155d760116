"""Tests of medclip_jax.data.records: encoding, shards, split files, dataset info."""

import os

import msgpack
import pytest

from medclip_jax.data import records
from tests.helpers import make_record


def test_encode_decode_round_trip():
  record = make_record()
  assert records.decode(records.encode(record)) == record


@pytest.mark.parametrize(
  'bad',
  [
    {'id': 'x'},  # missing keys
    dict(make_record(), extra=1),  # unknown key
    make_record(image='not bytes'),  # wrong type
    make_record(labels={'modality': 3}),  # label not a string
    make_record(kind='neither'),  # an unknown kind
    make_record(kind='text_only'),  # a text-only record with an image
    make_record(kind='image_only'),  # an image-only record with a caption
    make_record(image=b''),  # a paired record without an image
  ],
)
def test_encode_rejects_bad_records(bad):
  with pytest.raises(ValueError):
    records.encode(bad)


def test_unpaired_records_round_trip_lacking_what_their_kind_says():
  image_only = make_record(caption='', kind='image_only')
  text_only = make_record(image=b'', kind='text_only')
  for record in (image_only, text_only):
    assert records.decode(records.encode(record)) == record
  assert records.unpaired_split('train', 'image_only') == 'train_image_only'


def test_decode_rejects_garbage():
  with pytest.raises(ValueError, match='record'):
    records.decode(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='missing'):
    records.decode(msgpack.packb({'id': 'a'}))


def test_split_files_missing_names_directory_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    records.split_files(str(tmp_path), 'train')
  assert str(tmp_path) in str(e.value)
  assert 'medclip_jax.data.prepare' in str(e.value)
  with pytest.raises(FileNotFoundError, match='dataset_info.json'):
    records.read_dataset_info(str(tmp_path))


def test_write_split_shards_and_replaces_old_shards(tmp_path):
  many = [make_record(id=f'r{i}', group=f'g{i}') for i in range(300)]
  paths, count = records.write_split(many, str(tmp_path), 'train', 4)
  assert count == 300
  assert [os.path.basename(p) for p in paths] == [
    f'train.array_record-{i:05d}-of-00004' for i in range(4)
  ]
  assert sorted(r['id'] for r in records.read_records(paths)) == sorted(r['id'] for r in many)
  # A rewrite with few records uses one shard and drops the stale ones.
  paths, count = records.write_split(many[:5], str(tmp_path), 'train', 4)
  assert count == 5
  assert records.split_files(str(tmp_path), 'train') == paths
  assert [os.path.basename(p) for p in paths] == ['train.array_record-00000-of-00001']
  assert not [n for n in os.listdir(tmp_path) if 'tmp' in n]
