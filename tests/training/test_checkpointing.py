"""Checkpoints: what one holds; that checkpoints written before objectives and evaluators
became data still restore, export and train on exactly as before; that an unreadable latest
checkpoint is skipped for the one before and a failed save stops the run with the last intact."""

import errno
import json
import shutil
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.interop import export
from medclip_jax.training import checkpointing
from medclip_jax.training import trainer
from medclip_jax.training.setup import Setup
from medclip_jax.training.setup import restore_on_one_device
from medclip_jax.training.setup import shapes
from tests import helpers

# Written by the code of commit 891f5e0 (the layout before objectives and
# evaluators were data): step 1 of a sigmoid-loss run with a frozen text
# tower, the batch of step 2, and the loss and parameter sums that code
# computed at step 2. tests/fixtures/legacy_checkpoint/README.md says how.
LEGACY = Path(__file__).resolve().parent.parent / 'fixtures' / 'legacy_checkpoint'


def test_checkpoints_hold_state_data_position_and_config(trained_run):
  config, workdir, _ = trained_run
  ckpt = checkpointing.Checkpointer(str(workdir), keep=3)
  assert ckpt.all_steps() == [6, 12]
  step_dir = ckpt.directory / '12'
  assert {p.name for p in step_dir.iterdir()} >= {'state', 'data', 'config'}
  saved_config = json.loads((step_dir / 'config' / 'metadata').read_text())
  assert saved_config['train']['steps'] == config.train.steps
  ckpt.close()


@pytest.fixture
def legacy(tmp_path, tiny_data):
  """(config upgraded from the checkpoint, a copy of its workdir)."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(LEGACY / 'workdir', workdir)
  ckpt = checkpointing.Checkpointer(str(workdir), keep=3)
  config = ml_collections.ConfigDict(ckpt.restore_config(1))
  ckpt.close()
  config.data.dir = tiny_data  # it was written on the same tiny dataset elsewhere
  return config, workdir


def test_a_checkpoint_of_the_old_layout_restores_and_steps_as_recorded(legacy):
  config, workdir = legacy
  # The old config's loss and evaluation fields, read as today's (objectives added since, off).
  assert 'loss' not in config.model
  assert dict(config.objectives) == {'sigmoid': 1.0, 'attmim': 0.0, 'entmlm': 0.0}
  assert set(config.evals) == {'retrieval', 'zeroshot'}
  setup = Setup.create(config)
  batches = setup.train_batches()
  ckpt = checkpointing.Checkpointer(str(workdir), keep=3)
  state = setup.restore_state(ckpt, 1, batches)
  ckpt.close()
  assert int(state.step) == 1 and batches.get_state()['next_index'] == 1

  batch = dict(np.load(LEGACY / 'step_2_batch.npz'))
  state, metrics = setup.train_step(state, setup.global_batch(batch))
  expected = json.loads((LEGACY / 'step_2.json').read_text())
  np.testing.assert_allclose(float(metrics['loss']), expected['loss'], rtol=1e-6)
  sums = {
    jax.tree_util.keystr(path): [
      np.sum(x, dtype=np.float64),
      np.sum(np.square(x, dtype=np.float64)),
    ]
    for path, x in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  }
  assert sums.keys() == expected['param_sums'].keys()
  for key, (total, squares) in expected['param_sums'].items():
    # Measured against the leaf's norm: XLA's CPU code differs between machines (the loss
    # above agrees to 1e-6), and Adam's first steps turn gradients near zero (BatchNorm
    # biases) into updates of the learning rate's size, so their sums differ by ~2e-4 of
    # the norm from one machine to another; a wrong layout would differ by O(1).
    norm = np.sqrt(squares)
    np.testing.assert_allclose(sums[key][0], total, rtol=0, atol=2e-3 * norm + 1e-12, err_msg=key)
    np.testing.assert_allclose(sums[key][1], squares, rtol=2e-3, atol=1e-12, err_msg=key)


def test_a_checkpoint_of_the_old_layout_exports(legacy, tmp_path):
  _, workdir = legacy
  out = export.export(str(workdir), str(tmp_path / 'export'))
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  assert set(load_file(str(out / 'heads.safetensors'))) == {
    'image_projection.weight',
    'text_projection.weight',
    'logit_scale',
    'logit_bias',
  }
  assert json.loads((out / 'medclip.json').read_text())['objectives'] == {'sigmoid': 1.0}


def test_the_variables_alone_restore_as_in_the_whole_state(legacy, trained_run):
  """What using a model reads (no optimizer state) equals the train state's, old layout too."""
  _, tiny_workdir, _ = trained_run
  for config, workdir, step in ((*legacy, 1), (trained_run[0], tiny_workdir, 12)):
    ckpt = checkpointing.Checkpointer(str(workdir), keep=1_000)
    whole = jax.device_get(restore_on_one_device(config, ckpt, step).variables())
    abstract = shapes(config).abstract_state
    alone = ckpt.restore_variables(step, abstract.variables())
    ckpt.close()
    assert jax.tree.structure(alone) == jax.tree.structure(whole)
    for a, w in zip(jax.tree.leaves(alone), jax.tree.leaves(whole)):
      assert isinstance(a, np.ndarray)
      np.testing.assert_array_equal(a, w)


def test_a_failed_save_stops_the_run_and_leaves_the_previous_checkpoint(
  tiny_config, tmp_path, monkeypatch
):
  config = tiny_config()
  config.train.steps, config.train.checkpoint_every = 9, 3
  save = grain.checkpoint.CheckpointHandler.save

  def disk_full_at_step_6(self, directory, item=None, args=None):
    if directory.parent.name.startswith('6.'):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save(self, directory, item, args)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', disk_full_at_step_6)
  message = (
    r'Writing the checkpoint at step 6 to .*/checkpoints failed \(OSError: \[Errno 28\] No '
    r'space left on device\); the checkpoint at step 3 is intact\. Free disk space'
  )
  with pytest.raises(UserError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert checkpointer.all_steps() == [3]
  assert int(restore_on_one_device(config, checkpointer, 3).step) == 3


@pytest.mark.parametrize('damage', ['truncated', 'random_bytes'])
def test_an_unreadable_latest_checkpoint_is_skipped_naming_the_file(
  damage, trained_run, tmp_path, capsys
):
  config, reference_dir, reference = trained_run  # checkpoints 6 and 12
  workdir = tmp_path / 'run'
  shutil.copytree(reference_dir, workdir)
  files = sorted((workdir / 'checkpoints' / '12' / 'state').rglob('ocdbt.process_0/d/*'))
  largest = max(files, key=lambda p: p.stat().st_size)
  data = largest.read_bytes()
  if damage == 'truncated':
    largest.write_bytes(data[: len(data) // 2])
  else:
    largest.write_bytes(np.random.default_rng(0).bytes(len(data)))
  results = trainer.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  reason = 'bytes where' if damage == 'truncated' else 'its contents changed since it was written'
  assert f'warning: skipping the checkpoint at step 12: {largest}: ' in out and reason in out
  assert 'resuming from the checkpoint at step 6' in out
  assert sorted(helpers.training_rows(workdir)) == list(range(1, 13))
  for key, value in reference.items():  # steps 7..12 again, as the first time
    np.testing.assert_allclose(results[key], value, atol=1e-6, err_msg=key)
  assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['12']


_SAVE_ON_8_DEVICES = """
import grain, jax, jax.numpy as jnp, ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P
from medclip_jax.training import checkpointing
jax.config.update('jax_enable_compilation_cache', False)  # every compilation is counted
mesh = jax.make_mesh((2, 4), ('data', 'fsdp'))
# Replicated on all 8 devices, and split over fsdp (replicated over data) on either axis.
specs = {'replicated': P(), 'rows': P('fsdp'), 'columns': P(None, 'fsdp')}
state = {
  name: jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, spec))
  for name, spec in specs.items()
}
compiles = []
jax.monitoring.register_event_duration_secs_listener(
  lambda event, _, **kw: compiles.append(event) if event.endswith('backend_compile_duration') else None
)
iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
checkpointer = checkpointing.Checkpointer(WORKDIR, keep=1)
checkpointer.save(1, state, iterator, ml_collections.ConfigDict({'a': 1}), {})
checkpointer.wait()
print(len(compiles))
"""


def test_a_replicated_state_saves_on_8_devices_without_compiling(tmp_path):
  # Orbax's default on CPU splits each replicated shard among its replicas, one
  # compiled slice per shape and device: a 6 s stall at the first save of a tiny run.
  out = helpers.run_on_devices(8, _SAVE_ON_8_DEVICES.replace('WORKDIR', repr(str(tmp_path))))
  assert out.strip().splitlines()[-1] == '0', out
