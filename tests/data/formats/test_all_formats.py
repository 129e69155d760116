"""Every real format: a messy fixture prepares with exact counts, keeps groups in one split,
and a few training steps run on the result."""

import jax
import numpy as np
import pytest

from medclip_jax.data import prepare
from medclip_jax.training.setup import Setup
from tests.helpers import all_records
from tests.helpers import assert_groups_in_one_split
from tests.helpers import write_dicom_fixture
from tests.helpers import write_manifest_fixture
from tests.helpers import write_medpix_fixture
from tests.helpers import write_pubmedvision_fixture
from tests.helpers import write_reports_fixture
from tests.helpers import write_roco_fixture

WRITERS = {
  'manifest': write_manifest_fixture,
  'medpix': write_medpix_fixture,
  'roco': write_roco_fixture,
  'pubmedvision': write_pubmedvision_fixture,
  'reports': write_reports_fixture,
  'dicom': write_dicom_fixture,
}


@pytest.fixture(scope='module')
def stepper(tiny_config):
  """Runs training steps on a prepared directory; one Setup, so the step compiles once."""
  config = tiny_config()
  config.train.steps = 1000  # the schedule must not decay to 0 over the formats' steps
  setup = Setup.create(config)
  holder = {'state': setup.init_state()}

  def run(data_dir, steps=3):
    batches = setup.train_batches(seed=0, data_dir=data_dir)
    before = jax.device_get(holder['state'].params['image_projection'])
    losses = []
    for _ in range(steps):
      holder['state'], metrics = setup.train_step(
        holder['state'], setup.global_batch(next(batches))
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
  by_split = all_records(out)
  assert {s: len(r) for s, r in by_split.items()} == {
    s: v['count'] for s, v in info['splits'].items()
  }
  assert sorted(r['id'] for rs in by_split.values() for r in rs) == sorted(good)
  assert_groups_in_one_split(by_split)

  losses, changed = stepper(out)
  assert all(np.isfinite(losses)) and changed
