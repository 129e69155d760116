"""End-to-end training: loss falls, logs and evals are written, runs resume (bitwise after a
SIGKILL, also one mid-checkpoint), non-finite steps are skipped and, many in a row, stop the run."""

import contextlib
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from medclip_jax.evaluation import Evaluation
from medclip_jax.evaluation import results as results_lib
from medclip_jax.training import checkpointing
from medclip_jax.training import optimizer
from medclip_jax.training import preemption
from medclip_jax.training import trainer
from medclip_jax.training.setup import Setup
from medclip_jax.training.setup import restore_on_one_device
from tests import helpers

_EXPECTED_EVAL_KEYS = {
  'retrieval.gallery_size',
  'retrieval.i2t.R@1',
  'retrieval.i2t.R@5',
  'retrieval.i2t.R@10',
  'retrieval.t2i.R@1',
  'retrieval.t2i.R@5',
  'retrieval.t2i.R@10',
  'zeroshot.modality.top1',
  'zeroshot.modality.top3',
  'zeroshot.body_part.top1',
  'zeroshot.body_part.top3',
}


def test_loss_falls_and_logs_have_the_documented_keys(trained_run):
  _, workdir, _ = trained_run
  rows = helpers.training_rows(workdir)
  assert sorted(rows) == list(range(1, 13))
  for row in rows.values():
    assert {'step', 'loss', 'loss/infonce', 'learning_rate', 'pairs_per_sec'} <= set(row)
    assert row['loss/infonce'] == row['loss']  # the only objective, at weight 1
  assert all(rows[s]['pairs_per_sec'] > 0 for s in range(2, 13))
  first = np.mean([rows[s]['loss'] for s in (1, 2, 3)])
  last = np.mean([rows[s]['loss'] for s in (10, 11, 12)])
  assert last < first - 0.2, (first, last)
  assert list((Path(workdir) / 'tb').glob('events.out.tfevents.*'))


def test_final_evaluation_is_written_with_flat_keys(trained_run):
  _, workdir, results = trained_run
  saved = json.loads((Path(workdir) / 'eval' / 'step_12.json').read_text())
  assert saved == {**results, 'split': 'test', 'step': 12}
  assert _EXPECTED_EVAL_KEYS <= set(saved)
  assert saved['retrieval.gallery_size'] == 48
  for key, value in results.items():
    if key.endswith('_rank'):
      assert 1.0 <= value <= 48, key
    elif key != 'retrieval.gallery_size':
      assert 0.0 <= value <= 1.0, key


@contextlib.contextmanager
def _interrupted_after_saving(monkeypatch, at_step):
  """Within it, a trainer stops as if Ctrl-C arrived right after its save of `at_step`."""
  save = checkpointing.Checkpointer.save

  def save_then_interrupt(self, step, *args):
    save(self, step, *args)
    if step == at_step:
      raise KeyboardInterrupt

  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_then_interrupt)
  try:
    yield
  finally:
    monkeypatch.setattr(checkpointing.Checkpointer, 'save', save)


def test_interrupted_run_resumes_with_the_same_data_order(trained_run, tmp_path, monkeypatch):
  config, reference_dir, reference = trained_run
  with pytest.raises(KeyboardInterrupt), _interrupted_after_saving(monkeypatch, 6):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).latest_step() == 6

  resumed = trainer.train_and_evaluate(config, str(tmp_path))
  rows, ref_rows = helpers.training_rows(tmp_path), helpers.training_rows(reference_dir)
  assert sorted(rows) == list(range(1, 13))  # steps 7..12 once each, after 1..6
  for step in range(7, 13):
    np.testing.assert_allclose(rows[step]['loss'], ref_rows[step]['loss'], rtol=1e-5)
  for key, value in reference.items():
    np.testing.assert_allclose(resumed[key], value, atol=1e-6, err_msg=key)


def test_periodic_evaluations_use_the_val_split_and_the_final_one_the_test_split(
  tiny_config, tmp_path, capsys
):
  config = tiny_config()
  config.train.steps, config.eval.every, config.eval.bn_recompute_batches = 4, 2, 0
  trainer.train_and_evaluate(config, str(tmp_path))
  periodic = json.loads((tmp_path / 'eval' / 'step_2.json').read_text())
  final = json.loads((tmp_path / 'eval' / 'step_4.json').read_text())
  assert (periodic['split'], periodic['step'], periodic['retrieval.gallery_size']) == ('val', 2, 8)
  assert (final['split'], final['step'], final['retrieval.gallery_size']) == ('test', 4, 48)
  out = capsys.readouterr().out
  assert 'evaluated step 2 on val' in out and 'evaluated step 4 on test' in out
  # metrics.jsonl (and TensorBoard) keep the two splits under their own names.
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  evals = {r['step']: r for r in rows if any(k.endswith('retrieval.gallery_size') for k in r)}
  assert sorted(evals) == [2, 4]
  assert evals[2]['val/retrieval.gallery_size'] == 8
  assert evals[4]['test/retrieval.gallery_size'] == 48
  assert not [k for k in evals[2] if k.startswith('test/')]
  assert not [k for k in evals[4] if k.startswith('val/')]


def test_a_run_stopped_before_its_periodic_evaluation_evaluates_that_step_when_resumed(
  tiny_config, tmp_path, monkeypatch
):
  config = tiny_config()
  config.train.steps, config.eval.every, config.train.checkpoint_every = 4, 2, 2
  trainer.train_and_evaluate(config, str(tmp_path / 'whole'))
  with pytest.raises(KeyboardInterrupt), _interrupted_after_saving(monkeypatch, 2):
    trainer.train_and_evaluate(config, str(tmp_path / 'stopped'))  # step 2 saved, not evaluated
  assert not (tmp_path / 'stopped' / 'eval' / 'step_2.json').exists()
  trainer.train_and_evaluate(config, str(tmp_path / 'stopped'))
  for step in (2, 4):
    resumed = json.loads((tmp_path / 'stopped' / 'eval' / f'step_{step}.json').read_text())
    whole = json.loads((tmp_path / 'whole' / 'eval' / f'step_{step}.json').read_text())
    assert resumed.keys() == whole.keys() and resumed['split'] == whole['split']
    for key in resumed:
      if key not in ('split', 'step'):
        np.testing.assert_allclose(resumed[key], whole[key], atol=1e-6, err_msg=key)
  rows = [json.loads(l) for l in (tmp_path / 'stopped' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'val/retrieval.gallery_size' in r] == [2]


def test_a_stop_that_kills_a_periodic_evaluations_readers_checkpoints_and_stops(
  tiny_config, tmp_path, monkeypatch
):
  config = tiny_config()
  config.train.steps, config.eval.every, config.train.checkpoint_every = 4, 3, 100

  def killed(self, variables, split=None):  # as a job's SIGTERM reaching new reader processes
    os.kill(os.getpid(), signal.SIGTERM)
    raise RuntimeError('Worker process was terminated unexpectedly with exit code -15')

  monkeypatch.setattr(Evaluation, '__call__', killed)
  with pytest.raises(preemption.Preempted, match='at step 3'):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).all_steps() == [3]


def test_the_clock_restarts_after_a_periodic_evaluation(tiny_config, tmp_path, monkeypatch):
  config = tiny_config()
  config.train.steps, config.eval.every, config.eval.bn_recompute_batches = 4, 2, 0
  evaluate = Evaluation.__call__

  def slow(self, variables, split=None):
    time.sleep(3.0)  # far longer than a tiny step
    return evaluate(self, variables, split)

  monkeypatch.setattr(Evaluation, '__call__', slow)
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = helpers.training_rows(tmp_path)
  # Step 3's window starts after step 2's evaluation: a step's time, not the evaluation's.
  assert rows[3]['pairs_per_sec'] > config.train.batch_size / 1.0, rows[3]


@pytest.mark.parametrize('when', ['final evaluation', 'final checkpoint'])
def test_a_stop_at_the_end_keeps_every_step_and_the_rerun_only_evaluates(
  trained_run, tmp_path, monkeypatch, capsys, when
):
  config, _, reference = trained_run
  config = config.copy_and_resolve_references()
  config.train.checkpoint_every = 100  # the final checkpoint is the only one
  evaluate, save = Evaluation.__call__, checkpointing.Checkpointer.save

  def stopped(self, variables, split=None):
    if split == config.eval.split:
      os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(self, variables, split)

  def stopped_saving(self, step, *args):  # asked while the final statistics are recomputed
    if step == 12:
      os.kill(os.getpid(), signal.SIGTERM)
    save(self, step, *args)

  if when == 'final evaluation':
    monkeypatch.setattr(Evaluation, '__call__', stopped)
  else:
    monkeypatch.setattr(checkpointing.Checkpointer, 'save', stopped_saving)
  with pytest.raises(preemption.Preempted, match='at step 12'):
    trainer.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).all_steps() == [12]
  assert not results_lib.exists(str(tmp_path), 12, config.eval.split)
  capsys.readouterr()

  results = trainer.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'resuming from the checkpoint at step 12' in out and 'training steps' not in out
  assert sorted(helpers.training_rows(tmp_path)) == list(range(1, 13))
  for key, value in reference.items():  # the checkpoint holds the recomputed statistics
    np.testing.assert_allclose(results[key], value, atol=1e-6, err_msg=key)

  # Run once more: complete, so nothing is trained or evaluated again.
  assert trainer.train_and_evaluate(config, str(tmp_path)) == results
  assert 'This run is complete: trained to step 12 and evaluated on test' in (
    capsys.readouterr().out
  )
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert len([r for r in rows if 'test/retrieval.gallery_size' in r]) == 1


def test_a_checkpoint_past_the_configured_steps_is_refused(trained_run, tmp_path):
  config, workdir, _ = trained_run
  _copy_checkpoints(workdir, tmp_path)
  config = config.copy_and_resolve_references()
  config.train.steps = 8
  with pytest.raises(UserError, match='at step 12, past config.train.steps=8'):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).all_steps() == [6, 12]
  assert not (tmp_path / 'eval').exists()


def test_ending_a_run_at_a_checkpoint_saved_mid_run_is_refused(trained_run, tmp_path):
  config, workdir, _ = trained_run
  _copy_checkpoints(workdir, tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints' / '12')  # as a run stopped after its step-6 save
  config = config.copy_and_resolve_references()
  config.train.steps = 6
  with pytest.raises(UserError, match=r'steps=6 ends the run at the checkpoint saved at step 6 '):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).all_steps() == [6]


def test_a_run_resumed_with_another_batch_size_reads_on_from_the_same_example(
  trained_run, tmp_path, capsys
):
  config, workdir, _ = trained_run  # batch 16, checkpoints at 6 and 12
  shutil.copytree(workdir / 'checkpoints' / '6', tmp_path / 'checkpoints' / '6')
  config = config.copy_and_resolve_references()
  config.train.batch_size, config.train.steps = 8, 14
  trainer.train_and_evaluate(config, str(tmp_path))
  assert 'the data resumes at example 96 of the stream, where the run had read 96' in (
    capsys.readouterr().out
  )
  # 96 examples were 12 batches of 8; steps 7..14 read 8 more.
  position = json.loads(
    (tmp_path / 'checkpoints' / '14' / 'data' / 'process_0-of-1.json').read_text()
  )
  assert position == {'next_index': 20}


def _copy_checkpoints(workdir, to):
  shutil.copytree(Path(workdir) / 'checkpoints', Path(to) / 'checkpoints')


@pytest.mark.parametrize(
  'overrides, named',
  [
    # Same shapes: the checkpoint restores, the stored config tells them apart.
    (
      {'data.image_size': 64, 'model.text.pooling': 'cls', 'train.learning_rate': 0.01},
      ['data.image_size: 32 -> 64', "model.text.pooling: 'mean' -> 'cls'"],
    ),
    # Other shapes: named by key too, not only as mismatched arrays.
    ({'model.embed_dim': 64}, ['model.embed_dim: 32 -> 64']),
  ],
)
def test_resuming_with_a_changed_model_or_data_is_refused_naming_the_keys(
  trained_run, tmp_path, overrides, named
):
  config, workdir, _ = trained_run
  _copy_checkpoints(workdir, tmp_path)
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  for text in named:
    assert text in message
  assert 'learning_rate' not in message and 'fresh --workdir' in message
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).all_steps() == [6, 12]


def test_resuming_on_data_prepared_anew_in_the_same_directory_is_refused(trained_run, tmp_path):
  config, workdir, _ = trained_run
  _copy_checkpoints(workdir, tmp_path / 'run')
  config = config.copy_and_resolve_references()
  config.train.steps = 13
  # The run's data re-prepared in place with more training records (a copy stands for it).
  config.data.dir = str(tmp_path / 'data')
  helpers.prepare_checked(
    'synthetic', config.data.dir, dict(num_train=128, num_val=8, num_test=48, image_size=32)
  )
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert 'train: 96 records, 96 captions in 2 shard(s) then, 128 records' in message
  assert f'--config.init_from={tmp_path / "run"}' in message
  assert not helpers.training_rows(tmp_path / 'run')


def test_resuming_with_a_longer_run_and_a_new_learning_rate_lists_them_and_trains_on(
  trained_run, tmp_path, capsys
):
  config, workdir, _ = trained_run
  _copy_checkpoints(workdir, tmp_path)
  config = config.copy_and_resolve_references()
  config.train.steps, config.train.learning_rate = 13, 0.01
  config.eval.bn_recompute_batches = 0
  moved = tmp_path / 'staged'  # the same dataset, copied elsewhere as a job may stage it
  shutil.copytree(config.data.dir, moved)
  old_dir, config.data.dir = config.data.dir, str(moved)
  trainer.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert (
    f"resuming with settings changed since the checkpoint: data.dir: '{old_dir}' -> "
    f"'{moved}', eval.bn_recompute_batches: 2 -> 0, train.learning_rate: 0.001 -> 0.01, "
    'train.steps: 12 -> 13' in out
  )
  assert sorted(helpers.training_rows(tmp_path)) == [13]
  saved = checkpointing.Checkpointer(str(tmp_path), keep=3).restore_config(13)
  assert saved['train']['learning_rate'] == 0.01


# Run as `python -c CODE FLAGS`: the trainer, with the save of step 6 stalled after
# half of its data position is written, so that a SIGKILL lands mid-checkpoint.
_STALL_THE_SAVE_OF_STEP_6 = """
import sys, time
import grain
from absl import app
from medclip_jax import main
save = grain.checkpoint.CheckpointHandler.save
def stalled(self, directory, item=None, args=None):
  if directory.parent.name.startswith('6.'):
    (directory / 'process_0-of-1.json').write_text('{"next_ind')
    print('stalled in the save of step 6 at', directory, flush=True)
    time.sleep(600)
  return save(self, directory, item, args)
grain.checkpoint.CheckpointHandler.save = stalled
sys.argv = ['main'] + sys.argv[1:]
app.run(main.main)
"""


@pytest.mark.parametrize('while_saving', [False, True], ids=['between_saves', 'while_saving'])
def test_a_killed_run_rerun_ends_bitwise_equal_to_an_uninterrupted_one(
  while_saving, trained_run, tiny_flags, tmp_path
):
  config, reference_dir, _ = trained_run  # 12 steps, uninterrupted
  workdir = tmp_path / 'run'
  args = [f'--workdir={workdir}', *tiny_flags(train__checkpoint_every=2)]
  killed_log, rerun_log = tmp_path / 'killed.log', tmp_path / 'rerun.log'
  if while_saving:
    proc = helpers.start_main(args, killed_log, code=_STALL_THE_SAVE_OF_STEP_6)
    stalled = lambda: 'stalled in the save of step 6' in killed_log.read_text()
    helpers.wait_until(stalled, [proc], [killed_log])
  else:
    kill_after = random.randint(4, 8)
    proc = helpers.start_main(args, killed_log)
    logged = lambda: max(helpers.training_rows(workdir), default=0) >= kill_after
    helpers.wait_until(logged, [proc], [killed_log])
  proc.kill()
  proc.wait()
  killed_at = max(helpers.training_rows(workdir))
  # None when no save had completed yet (they are written in the background): a fresh start.
  restart = checkpointing.Checkpointer(str(workdir), keep=3).latest_step()
  assert restart is None or restart <= killed_at, (restart, killed_at)
  if while_saving:
    assert restart == 4 and killed_at == 6
    assert list((workdir / 'checkpoints').glob('6.orbax-checkpoint-tmp*'))  # half-written

  # The rerun reads with a worker process: the data position does not depend on it.
  rerun_args = [f'--workdir={workdir}', *tiny_flags(train__checkpoint_every=2, data__workers=1)]
  rerun = helpers.start_main(rerun_args, rerun_log)
  assert rerun.wait(timeout=300) == 0, rerun_log.read_text()
  out = rerun_log.read_text()
  assert f'took over the workdir lock left by process {proc.pid}' in out
  assert 'data.workers: 0 -> 1' in out or restart is None
  assert 'leaked shared_memory' not in out  # the worker's batches in flight were released
  if restart is not None:
    assert f'resuming from the checkpoint at step {restart}' in out
  restart = restart or 0
  rows, reference_rows = helpers.training_rows(workdir), helpers.training_rows(reference_dir)
  assert sorted(rows) == list(range(1, 13)), f'killed after step {killed_at}'
  for step in range(restart + 1, 13):
    assert rows[step]['loss'] == reference_rows[step]['loss'], step
  ours = restore_on_one_device(config, checkpointing.Checkpointer(str(workdir), keep=3), 12)
  reference = restore_on_one_device(
    config, checkpointing.Checkpointer(str(reference_dir), keep=3), 12
  )
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _plant_nan_images(monkeypatch, steps):
  """Makes every training batch's images float32 (one compiled step) and NaN at `steps`."""
  global_batch = Setup.global_batch
  seen = []

  def planted(self, local):
    if 'stop' in local:  # a training step's batch
      seen.append(len(seen) + 1)
      image = local['image'].astype(np.float32)
      if seen[-1] in steps:
        image[:] = np.nan
      local = {**local, 'image': image}
    return global_batch(self, local)

  monkeypatch.setattr(Setup, 'global_batch', planted)


def test_a_non_finite_step_is_skipped_and_counted(tiny_config, tmp_path, monkeypatch):
  config = tiny_config()
  config.train.steps, config.train.checkpoint_every, config.train.keep_checkpoints = 5, 1, 10
  config.eval.bn_recompute_batches = 0
  _plant_nan_images(monkeypatch, {3})
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = helpers.training_rows(tmp_path)
  assert [rows[s]['skipped_steps'] for s in range(1, 6)] == [0, 0, 1, 0, 0]
  assert [rows[s]['skipped_total'] for s in range(1, 6)] == [0, 0, 1, 1, 1]
  assert rows[3]['loss'] is None and all(np.isfinite(rows[s]['loss']) for s in (1, 2, 4, 5))
  # The schedule advances with the applied steps, and the logged rate is the one applied.
  schedule = optimizer.learning_rate_schedule(config.train)
  assert [rows[s]['learning_rate'] for s in range(1, 6)] == pytest.approx(
    [float(schedule(n)) for n in (0, 1, 2, 2, 3)]
  )
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=10)
  before, after = (restore_on_one_device(config, checkpointer, s) for s in (2, 3))
  assert (int(before.step), int(before.skipped), int(after.step), int(after.skipped)) == (
    2,
    0,
    3,
    1,
  )
  for name in ('params', 'batch_stats', 'opt_state', 'rng'):
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)


def test_non_finite_steps_in_a_row_stop_the_run_naming_the_last_good_checkpoint(
  tiny_config, tmp_path, monkeypatch
):
  config = tiny_config()
  config.train.checkpoint_every, config.train.max_nonfinite_in_a_row = 3, 3
  _plant_nan_images(monkeypatch, {4, 5, 6})
  message = (
    r'Training stopped at step 6: the loss or gradients were not finite for 3 steps in a row '
    r'\(steps 4\.\.6, all skipped; .*The last checkpoint before them: step 3 in '
  )
  with pytest.raises(UserError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path))
  # Step 6's flags are read while step 7 runs; the run stops before step 7 is logged.
  assert max(helpers.training_rows(tmp_path)) == 6


def test_sigmoid_loss_trains_beside_infonce_and_exports_its_bias(tiny_config, tmp_path):
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  config.objectives = {'sigmoid': 1.0, 'infonce': 0.25}
  config.model.logit_scale_init = float(np.log(10.0))
  config.train.steps = 6
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = helpers.training_rows(tmp_path)
  assert rows[6]['loss/sigmoid'] < rows[1]['loss/sigmoid']
  for row in rows.values():  # the weighted sum, each term logged under its own name
    np.testing.assert_allclose(
      row['loss'], row['loss/sigmoid'] + 0.25 * row['loss/infonce'], rtol=1e-6
    )
  assert rows[1]['sigmoid/logit_bias'] == -10.0 and rows[6]['sigmoid/logit_bias'] != -10.0
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  heads = load_file(str(export.export(str(tmp_path), str(tmp_path / 'out')) / 'heads.safetensors'))
  assert heads['logit_bias'].size == 1 and heads['logit_bias'].item() != -10.0  # trained


def test_a_locked_image_tower_keeps_the_batchnorm_statistics_it_trained_on(
  tiny_config, tmp_path, capsys
):
  config = tiny_config()
  config.train.lr_multipliers.image_encoder = 0.0
  config.train.steps, config.eval.bn_recompute_batches = 3, 2
  trainer.train_and_evaluate(config, str(tmp_path))
  assert 'not recomputed (the image tower is locked' in capsys.readouterr().out
  initial = Setup.create(config).init_state().batch_stats
  final = restore_on_one_device(config, checkpointing.Checkpointer(str(tmp_path), keep=3), 3)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(final.batch_stats), jax.tree.leaves(initial)
  ):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_a_run_loads_and_exports_from_anywhere_once_its_data_and_tokenizer_are_gone(
  tiny_config, tmp_path, monkeypatch
):
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  data = tmp_path / 'data'
  shutil.copytree(config.data.dir, data)
  info = json.loads((data / 'dataset_info.json').read_text())
  (data / 'dataset_info.json').write_text(json.dumps({**info, 'max_side': 48}))  # prepared at 48
  tokenizer = tmp_path / 'tokenizer'  # a tokenizer directory of the user's
  shutil.copytree(tokenizer_lib.resolve(config.data.tokenizer), tokenizer)
  config.data.tokenizer = str(tokenizer)
  monkeypatch.chdir(tmp_path)
  config.data.dir = 'data'  # as the shipped configs give it: relative
  config.train.steps, config.eval.bn_recompute_batches = 2, 0
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  monkeypatch.chdir(tmp_path / 'run')
  assert load.load(tmp_path / 'run').config.data.dir == str(data)
  # Moved, deleted, or the workdir copied to another machine.
  shutil.rmtree(data)
  shutil.rmtree(tokenizer)
  assert load.load(tmp_path / 'run').max_side == 48
  exported = load.load(export.export(str(tmp_path / 'run'), str(tmp_path / 'out')))
  assert exported.max_side == 48
  assert exported.config.data.tokenizer == str(tmp_path / 'out' / 'text_encoder')


def test_training_on_label_text_reports_truncated_texts(tiny_config, tmp_path, capsys):
  config = tiny_config()
  config.data.train_text = '{modality} of the {body_part}.'
  config.data.max_text_length = 5  # '[CLS] ct of the brain . [SEP]' does not fit
  config.train.steps = 3
  config.eval.bn_recompute_batches = 0
  trainer.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert (
    "training text: '{modality} of the {body_part}.' filled from labels; "
    '0 of 96 train records lack a label it names' in out
  )
  assert (
    '48 of 48 training texts (100.0%) were longer than config.data.max_text_length=5 tokens' in out
  )
  rows = helpers.training_rows(tmp_path)
  assert [rows[s]['truncated_texts'] for s in (1, 2, 3)] == [16, 16, 16]


def test_a_locked_text_towers_cached_features_train_as_running_it_also_after_a_resume(
  tiny_config, tmp_path, capsys, monkeypatch
):
  def run(workdir, cache):
    config = tiny_config()
    config.train.lr_multipliers.text_encoder = 0.0
    config.train.steps, config.train.checkpoint_every = 8, 4  # 128 examples: past an epoch
    config.train.cache_locked_text = cache
    config.eval.bn_recompute_batches = 0
    trainer.train_and_evaluate(config, str(workdir))
    return helpers.training_rows(workdir)

  running = run(tmp_path / 'running', cache=False)
  assert 'computed once' not in capsys.readouterr().out
  with pytest.raises(KeyboardInterrupt), _interrupted_after_saving(monkeypatch, 4):
    run(tmp_path / 'cached', cache=True)
  assert 'its features of the 96 training texts computed once' in capsys.readouterr().out
  cached = run(tmp_path / 'cached', cache=True)  # resumed at step 4, the features again
  assert sorted(cached) == list(range(1, 9))
  for step in range(1, 9):
    np.testing.assert_allclose(cached[step]['loss'], running[step]['loss'], rtol=1e-5)


def test_features_are_not_cached_where_a_records_text_can_change(tiny_config):
  config = tiny_config()
  config.train.lr_multipliers.text_encoder = 0.0
  config.train.cache_locked_text = True
  config.data.hflip_prob = 0.5  # with laterality 'swap', flips rewrite 'left' and 'right'
  setup = Setup.create(config)
  info = {'splits': {'train': {'count': 96, 'captions': 96}}}
  features, note = setup.locked_text_features(setup.abstract_state.params, info)
  assert features is None and 'flips rewrite captions' in note
  config.data.hflip_prob = 0.0
  several = {'splits': {'train': {'count': 96, 'captions': 120}}}
  assert 'several captions' in setup.locked_text_features(setup.abstract_state.params, several)[1]
  uncounted = {'splits': {'train': {'count': 96}}}  # e.g. a TFDS build before captions counted
  note = setup.locked_text_features(setup.abstract_state.params, uncounted)[1]
  assert 'does not count its captions' in note
  config.train.lr_multipliers.text_encoder = 0.1
  assert (
    'not locked' in Setup.create(config).locked_text_features(setup.abstract_state.params, info)[1]
  )


def test_mmclip_objectives_train_on_paired_image_only_and_text_only_records(
  tiny_config, tmp_path, capsys
):
  from medclip_jax.data import prepare  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import tables  # pylint: disable=import-outside-toplevel

  data = tmp_path / 'data'
  # 64 px: AttMIM masks 2 of the image grid's 2 x 2 cells.
  prepare.prepare(
    'synthetic',
    str(data),
    num_train=64,
    num_val=8,
    num_test=16,
    image_size=64,
    unpaired_images=32,
    unpaired_texts=32,
  )
  config = tiny_config()
  config.data.dir, config.data.image_size = str(data), 64
  config.update_from_flattened_dict(
    {
      'objectives.attmim': 1.0,
      'objectives.entmlm': 1.0,
      'attmim.width': 16,
      'entmlm.width': 16,
      'data.unpaired.image_only': 0.25,
      'data.unpaired.text_only': 0.25,
      'train.steps': 4,
      'train.log_every': 2,
    }
  )
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert 'training mix: 50% paired, 25% image-only, 25% text-only' in out
  assert 'trained on 32 paired, 16 image-only, 16 text-only records in this run' in out
  rows = helpers.training_rows(tmp_path / 'run')
  for step, row in rows.items():
    # Every batch of 16: 8 paired, 4 image-only and 4 text-only records; totals so far.
    assert (row['data/paired'], row['data/image_only'], row['data/text_only']) == (8, 4, 4)
    assert row['data/seen_image_only'] == row['data/seen_text_only'] == 4 * step
    for name in ('loss', 'loss/infonce', 'loss/attmim', 'loss/entmlm'):
      assert np.isfinite(row[name]), (step, name)
    # 2 of the 4 cells of each image; text-only rows' blank images are not rebuilt.
    assert row['attmim/mask_ratio'] == 0.5
    assert 0 < row['entmlm/mask_ratio'] < 1 and row['entmlm/with_entity'] > 0.9
  # The decoders train but stay out of the export, which holds the two towers and heads.
  exported = export.export(str(tmp_path / 'run'), str(tmp_path / 'out'))
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  assert set(load_file(str(exported / 'heads.safetensors'))) == {
    'image_projection.weight',
    'text_projection.weight',
    'logit_scale',
  }
  assert not any('decoder' in p.name for p in exported.rglob('*'))
  # Loading the workdir reads what its export holds; config.init_from carries the decoders over.
  assert set(load.load(tmp_path / 'run').variables['params']) == set(tables.EXPORTED_PARAMS) - {
    'logit_bias'
  }
  trained = load.load(tmp_path / 'run', decoders=True).variables['params']
  config.init_from = str(tmp_path / 'run')
  started = Setup.create(config).init_state().params
  for name in ('attmim_decoder', 'entmlm_decoder'):
    for a, b in zip(jax.tree.leaves(started[name]), jax.tree.leaves(trained[name]), strict=True):
      np.testing.assert_array_equal(a, b, err_msg=name)
