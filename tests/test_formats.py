"""Every real format: a messy fixture prepares with exact counts, keeps groups
in one split, and a few training steps run on the result."""

import collections

import jax
import numpy as np
import pytest

from medclip_jax import optimizer as optimizer_lib
from medclip_jax import sharding
from medclip_jax import train
from medclip_jax.data import pipeline
from medclip_jax.data import prepare
from medclip_jax.data import records
from tests import dataset_fixtures
from tests.test_dicom import write_dicom_fixture
from tests.test_formats_pubmedvision_reports import write_pubmedvision_fixture
from tests.test_formats_pubmedvision_reports import write_reports_fixture


def _dicom_fixture(directory):
  good, bad = write_dicom_fixture(directory)
  return dict(input=str(directory), max_side=64, max_bad_fraction=0.5), good, bad


WRITERS = {
  'manifest': dataset_fixtures.write_manifest_fixture,
  'medpix': dataset_fixtures.write_medpix_fixture,
  'roco': dataset_fixtures.write_roco_fixture,
  'pubmedvision': write_pubmedvision_fixture,
  'reports': write_reports_fixture,
  'dicom': _dicom_fixture,
}


@pytest.fixture(scope='module')
def stepper(tiny_config):
  """Runs training steps on a prepared directory with one compiled step."""
  config = tiny_config()
  config.train.steps = 1000  # the schedule must not decay to 0 over the formats' steps
  mesh = sharding.create_mesh(config.mesh)
  model, tx, abstract_state = train.model_and_optimizer(config)
  shardings = sharding.state_shardings(abstract_state, mesh, config.fsdp_min_size)
  step = train.jit_train_step(
    model, tx, optimizer_lib.learning_rate_schedule(config.train), mesh, config, shardings
  )
  holder = {'state': train.init_state(model, tx, config, shardings, jax.random.PRNGKey(0))}

  def run(data_dir, steps=3):
    config.data.dir = str(data_dir)
    batches = pipeline.train_iterator(
      config.data,
      seed=0,
      local_batch_size=config.train.batch_size,
      process_index=0,
      process_count=1,
    )
    before = jax.device_get(holder['state'].params['image_projection'])
    losses = []
    for _ in range(steps):
      holder['state'], metrics = step(
        holder['state'], sharding.to_global_batch(next(batches), mesh)
      )
      losses.append(float(metrics['loss']))
    after = jax.device_get(holder['state'].params['image_projection'])
    changed = not all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
    )
    return losses, changed

  return run


@pytest.mark.parametrize('format_name', sorted(WRITERS))
def test_messy_fixture_prepares_exactly_and_trains(format_name, tmp_path, stepper):
  options, good, bad = WRITERS[format_name](tmp_path / 'input')
  out = tmp_path / 'prepared'
  info = prepare.prepare(format_name, str(out), **options)

  assert info['converted'] == len(good)
  assert sorted((s['id'], s['reason']) for s in info['skipped']) == sorted(bad.items())
  by_split = {
    split: list(records.read_records(records.split_files(str(out), split)))
    for split in records.SPLITS
  }
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  assert sorted(r['id'] for rs in by_split.values() for r in rs) == sorted(good)
  splits_of_group = collections.defaultdict(set)
  for split, recs in by_split.items():
    for rec in recs:
      splits_of_group[rec['group']].add(split)
  assert all(len(s) == 1 for s in splits_of_group.values()), splits_of_group

  losses, changed = stepper(out)
  assert all(np.isfinite(losses)) and changed
