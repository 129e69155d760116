"""Tests of medclip_jax.data.tfds_builders, the optional TFDS builders: built and read without
TensorFlow, equal to prepare's output, and read by the training input."""

import os
import pathlib
import re
import subprocess
import sys
import types

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from medclip_jax.data import images
from medclip_jax.data import pipeline
from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.data import tfds_builders
from medclip_jax.data.formats.base import OptionError
from medclip_jax.errors import UserError
from tests.helpers import MAX_SIDE
from tests.helpers import REPO
from tests.helpers import data_config
from tests.helpers import write_manifest_fixture

NAME = 'medclip_manifest/fixture'


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
  """The manifest fixture, built by TFDS into data_dir and by prepare into prepared."""
  manual_dir = str(tmp_path_factory.mktemp('manual'))
  options, _, bad = write_manifest_fixture(pathlib.Path(manual_dir))
  prepared = str(tmp_path_factory.mktemp('prepared'))
  info = prepare.prepare('manifest', prepared, **options)
  # TFDS path options are relative to the manual directory.
  options['input'] = os.path.relpath(options['input'], manual_dir)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds_builders.build('manifest', manual_dir, data_dir, 'fixture', **options)
  return types.SimpleNamespace(
    manual_dir=manual_dir, options=options, data_dir=data_dir, prepared=prepared, info=info, bad=bad
  )


def test_tfds_examples_are_prepares_records(manifest):
  sources = tfds.data_source(
    NAME, data_dir=manifest.data_dir, decoders={'image': tfds.decode.SkipDecoding()}
  )
  assert set(sources) == set(records.SPLITS)
  for split in records.SPLITS:
    want = list(records.read_records(records.split_files(manifest.prepared, split)))
    got = [tfds_builders.to_record(example) for example in sources[split]]
    assert want, split  # the fixture puts groups in every split
    assert sorted(got, key=lambda r: r['id']) == sorted(want, key=lambda r: r['id']), split
  metadata = tfds_builders.dataset_info(NAME, manifest.data_dir)
  assert {s['id']: s['reason'] for s in metadata['skipped']} == manifest.bad
  # Prepare's info, its split entries (records and captions counted) less the shard files.
  splits = {
    split: {k: v for k, v in entry.items() if k != 'files'}
    for split, entry in manifest.info['splits'].items()
  }
  assert metadata == {
    **manifest.info,
    'splits': splits,
    'build': tfds_builders.build_record(manifest.manual_dir, manifest.options),
  }
  assert all(entry['captions'] >= entry['count'] for entry in metadata['splits'].values())


def test_tfds_decodes_images_like_the_pipeline(manifest):
  pngs = {
    r['id']: r['image'] for r in records.read_records(records.split_files(manifest.prepared, 'val'))
  }
  for example in tfds.data_source(NAME, split='val', data_dir=manifest.data_dir):
    image = np.asarray(images.decode(pngs[example['id'].decode()]))
    np.testing.assert_array_equal(example['image'], image)


def test_record_source_feeds_the_training_pipeline(manifest):
  source = tfds_builders.RecordSource(NAME, 'train', manifest.data_dir)
  preprocess = pipeline.Preprocess(data_config(), label_vocabs={'modality': ['CT', 'MR']})
  batch = grain.MapDataset.source(source).seed(0).shuffle().map(preprocess).batch(2)[0]
  assert batch['image'].shape == (2, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['input_ids'].shape == (2, 16)
  assert set(batch['label/modality']) <= {0, 1}
  train = pipeline.Preprocess(data_config(), train=True)
  assert train(source[len(source) - 1], np.random.default_rng(0))['image'].shape == (16, 16, 3)


def test_options_need_a_config_name_and_bad_ones_fail_like_prepare(manifest, tmp_path):
  with pytest.raises(OptionError, match='config name other than "default"'):
    tfds_builders.build('manifest', manifest.manual_dir, str(tmp_path), **manifest.options)
  with pytest.raises(prepare.TooManyBadRecords):
    tfds_builders.build(
      'manifest',
      manifest.manual_dir,
      str(tmp_path),
      'strict',
      **{**manifest.options, 'max_bad_fraction': 0.0},
    )


def test_a_build_name_taken_by_other_files_or_options_is_refused_not_reused(manifest, tmp_path):
  again = tfds_builders.build(
    'manifest', manifest.manual_dir, manifest.data_dir, 'fixture', **manifest.options
  )  # the same files and options: the build there is used as it is
  assert again.info.splits['train'].num_examples == manifest.info['splits']['train']['count']
  with pytest.raises(OptionError, match="already holds a build named 'fixture' of .*give another"):
    tfds_builders.build(
      'manifest',
      manifest.manual_dir,
      manifest.data_dir,
      'fixture',
      **{**manifest.options, 'val_fraction': 0.5},
    )
  with pytest.raises(OptionError, match='--manual_dir=.*missing is not a directory'):
    tfds_builders.build('manifest', str(tmp_path / 'missing'), str(tmp_path), 'x')


def _python(*args):
  """Python with interpreter options (-X, -c), which run_module does not take."""
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
  )


def test_command_builds_without_importing_tensorflow(manifest, tmp_path):
  # The module docstring's command; -X importtime lists every module it imports.
  result = _python(
    '-X',
    'importtime',
    '-m',
    'medclip_jax.data.tfds_builders',
    '--format=manifest',
    f'--manual_dir={manifest.manual_dir}',
    f'--output={tmp_path}',
    '--config_name=fixture',
    *[f'--{name}={value}' for name, value in manifest.options.items()],
  )
  assert result.returncode == 0, result.stderr
  assert not re.search(r'\|\s+tensorflow(\.\S+)?$', result.stderr, re.MULTILINE)
  counts = ', '.join(f'{split} {s["count"]}' for split, s in manifest.info['splits'].items())
  assert f'{counts}; {len(manifest.bad)} skipped' in result.stdout
  built = tfds_builders.dataset_info(NAME, str(tmp_path))
  assert built == tfds_builders.dataset_info(NAME, manifest.data_dir)


def test_training_path_imports_neither_tfds_nor_tensorflow():
  result = _python(
    '-c',
    'import sys; import medclip_jax.main, medclip_jax.training.trainer\n'
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', "
    "'tensorflow_datasets')))",
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'


def test_training_input_reads_a_tfds_dataset_by_name(manifest, tiny_config, tmp_path):
  config = tiny_config()
  config.data.tfds_name, config.data.dir = NAME, manifest.data_dir
  info = pipeline.dataset_info(config.data)
  assert info['splits']['train']['count'] == manifest.info['splits']['train']['count']
  batch = next(
    pipeline.train_iterator(
      config.data, seed=0, local_batch_size=4, process_index=0, process_count=1
    )
  )
  assert batch['image'].shape == (4, 32, 32, 3) and batch['input_ids'].shape == (4, 24)
  evaluated = list(
    pipeline.eval_batches(
      config.data,
      'test',
      global_batch_size=4,
      process_index=0,
      process_count=1,
      label_vocabs=info['labels'],
    )
  )
  assert sum(int(b['mask'].sum()) for b in evaluated) == manifest.info['splits']['test']['count']
  # A model trained on it reads its inputs at the build's --max_side, not the default.
  assert images.prepared_max_side(config.data) == manifest.info['max_side'] == MAX_SIDE
  config.data.dir = str(tmp_path)  # nothing built there
  with pytest.raises(UserError, match="No TFDS dataset 'medclip_manifest/fixture' found"):
    pipeline.dataset_info(config.data)
