"""End-to-end training: loss falls, logs and evals are written, runs resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medclip_jax.training import checkpointing
from medclip_jax.training import trainer

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


def _train_rows(workdir):
  rows = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r for r in rows if 'loss' in r}


def test_loss_falls_and_logs_have_the_documented_keys(trained_run):
  _, workdir, _ = trained_run
  rows = _train_rows(workdir)
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
  assert saved == results
  assert _EXPECTED_EVAL_KEYS <= set(saved)
  assert saved['retrieval.gallery_size'] == 48
  for key, value in saved.items():
    if key.endswith('_rank'):
      assert 1.0 <= value <= 48, key
    elif key != 'retrieval.gallery_size':
      assert 0.0 <= value <= 1.0, key


def test_interrupted_run_resumes_with_the_same_data_order(trained_run, tmp_path, monkeypatch):
  config, reference_dir, reference = trained_run
  save = checkpointing.Checkpointer.save

  def save_then_interrupt(self, step, *args):
    save(self, step, *args)
    if step == 6:
      raise KeyboardInterrupt  # as if Ctrl-C arrived right after this save

  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.Checkpointer(str(tmp_path), keep=3).latest_step() == 6
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save)

  resumed = trainer.train_and_evaluate(config, str(tmp_path))
  rows, ref_rows = _train_rows(tmp_path), _train_rows(reference_dir)
  assert sorted(rows) == list(range(1, 13))  # steps 7..12 once each, after 1..6
  for step in range(7, 13):
    np.testing.assert_allclose(rows[step]['loss'], ref_rows[step]['loss'], rtol=1e-5)
  for key, value in reference.items():
    np.testing.assert_allclose(resumed[key], value, atol=1e-6, err_msg=key)


def _main(args, **kwargs):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.Popen(
    [sys.executable, '-m', 'medclip_jax.main', *args],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def test_sigkill_mid_training_then_rerun_resumes_from_the_checkpoint(tiny_flags, tmp_path):
  every = {'train__log_every': 5, 'train__checkpoint_every': 5}
  proc = _main(
    [f'--workdir={tmp_path}', *tiny_flags(train__steps=100000, **every)], start_new_session=True
  )
  checkpoints = tmp_path / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and not (checkpoints / '10').exists():
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  saved = checkpointing.Checkpointer(str(tmp_path), keep=3).latest_step()
  assert saved is not None and saved >= 10

  rerun = _main([f'--workdir={tmp_path}', *tiny_flags(train__steps=saved + 5, **every)])
  out, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, out
  assert f'resuming from the checkpoint at step {saved}' in out
  assert f'training steps {saved + 1}..{saved + 5}' in out


def test_sigmoid_loss_trains_beside_infonce_and_exports_its_bias(tiny_config, tmp_path):
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  config.objectives = {'sigmoid': 1.0, 'infonce': 0.25}
  config.model.logit_scale_init = float(np.log(10.0))
  config.train.steps = 6
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = _train_rows(tmp_path)
  assert rows[6]['loss/sigmoid'] < rows[1]['loss/sigmoid']
  for row in rows.values():  # the weighted sum, each term logged under its own name
    np.testing.assert_allclose(
      row['loss'], row['loss/sigmoid'] + 0.25 * row['loss/infonce'], rtol=1e-6
    )
  assert rows[1]['sigmoid/logit_bias'] == -10.0 and rows[6]['sigmoid/logit_bias'] != -10.0
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  heads = load_file(str(export.export(str(tmp_path), str(tmp_path / 'out')) / 'heads.safetensors'))
  assert heads['logit_bias'].size == 1 and heads['logit_bias'].item() != -10.0  # trained


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
  rows = _train_rows(tmp_path)
  assert [rows[s]['truncated_texts'] for s in (1, 2, 3)] == [16, 16, 16]
