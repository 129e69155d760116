"""The evaluation command: a workdir and its export evaluate alike; results, files and report."""

import json
import shutil

import numpy as np
import pytest

from configs import demo
from medclip_jax import evaluate
from medclip_jax.errors import UserError
from medclip_jax.evaluation import results as results_lib
from medclip_jax.interop import export
from tests import helpers


@pytest.fixture(scope='module')
def evaluated(trained_run, tmp_path_factory):
  """(workdir copy, its results with caption and probe on, export dir, the export's results)."""
  config, workdir, _ = trained_run
  copy = tmp_path_factory.mktemp('evaluated') / 'run'
  shutil.copytree(workdir, copy)  # trained_run's own files stay as they are
  evals = demo.get_config().evals
  evals.caption.examples = 4
  evals.linear_probe.fractions = (0.1, 1.0)
  evals.linear_probe.Cs = (1.0,)
  evals.zeroshot = config.evals.zeroshot
  _, results, report, _ = evaluate.evaluate(copy, evals=evals)
  exported = export.export(str(copy), str(copy.parent / 'export'))
  _, export_results, _, _ = evaluate.evaluate(exported, only=['retrieval', 'zeroshot'])
  return copy, results, report, exported, export_results


def test_it_writes_flat_results_the_per_image_file_and_the_report(evaluated, trained_run):
  copy, results, report, _, _ = evaluated
  _, _, trained = trained_run
  saved = json.loads((copy / 'eval' / 'step_12.json').read_text())
  assert saved == {**results, 'split': 'test', 'step': 12}
  # The training run's keys, with the same values: evaluation is reproducible.
  for key, value in trained.items():
    assert results[key] == pytest.approx(value, abs=1e-6), key
  assert {'caption.cider_d', 'caption.random.cider_d', 'caption.oracle.cider_d'} <= set(results)
  assert 'linear_probe.modality.100%.balanced_accuracy' in results
  rows = (copy / 'eval' / 'step_12' / 'captions.jsonl').read_text().splitlines()
  assert len(rows) == 48 and len(json.loads(rows[0])['retrieved']) == 3
  assert report == copy / 'eval' / 'step_12' / 'report.html'
  html = report.read_text()
  assert 'caption.oracle.cider_d' in html and html.count('data:image/png;base64,') >= 4


def test_an_export_evaluates_like_its_workdir(evaluated):
  _, results, _, exported, export_results = evaluated
  assert (exported / 'eval' / 'step_12.json').is_file()
  for key, value in export_results.items():
    np.testing.assert_allclose(value, results[key], atol=1e-4, err_msg=key)
  assert set(export_results) == {k for k in results if k.startswith(('retrieval.', 'zeroshot.'))}


def test_only_keeps_the_other_results_of_the_step(evaluated):
  copy, results, report, _, _ = evaluated
  full_report = report.read_text()
  _, again, partial, _ = evaluate.evaluate(copy, only=['retrieval'])
  assert again == results  # retrieval recomputed, the rest kept from the file
  assert report.read_text() == full_report  # the full report is kept too
  assert partial == report.with_name('report.retrieval.html') and 'retrieval.i2t' in (
    partial.read_text()
  )
  with pytest.raises(UserError, match=r"--only names \['bleu'\]"):
    evaluate.evaluate(copy, only=['bleu'])


def test_only_drops_the_rerun_evaluators_earlier_keys(evaluated):
  copy, results, _, _, _ = evaluated
  evals = demo.get_config().evals
  evals.retrieval.ks = (1, 2)
  _, again, _, _ = evaluate.evaluate(copy, evals=evals, only=['retrieval'])
  assert 'retrieval.i2t.R@2' in again and 'retrieval.i2t.R@10' not in again  # no stale R@10
  assert {k: v for k, v in again.items() if not k.startswith('retrieval.')} == {
    k: v for k, v in results.items() if not k.startswith('retrieval.')
  }
  evaluate.evaluate(copy, only=['retrieval'])  # as it was, for the other tests


def test_only_refuses_an_evaluator_the_config_switches_off(evaluated):
  copy, _, _, _, _ = evaluated
  evals = demo.get_config().evals
  assert evals.finetune.type == 'off'
  with pytest.raises(UserError, match=r"--only names \['finetune'\], which config.evals switches"):
    evaluate.evaluate(copy, evals=evals, only=['finetune'])


def test_an_evaluator_missing_its_training_split_is_a_user_error_before_embedding(evaluated):
  copy, _, _, _, _ = evaluated
  evals = demo.get_config().evals
  evals.linear_probe.train_split = 'training'
  with pytest.raises(UserError, match="The linear probe trains on the 'training' split, which"):
    evaluate.evaluate(copy, evals=evals, only=['linear_probe'])


def test_an_intermediate_steps_periodic_results_are_not_overwritten(evaluated):
  copy, _, _, _, _ = evaluated
  periodic = results_lib.write(str(copy), 6, 'val', {'retrieval.i2t.R@1': 0.5})
  before = periodic.read_text()
  _, _, report, _ = evaluate.evaluate(copy, step=6, only=['retrieval'])
  assert periodic.read_text() == before
  assert json.loads((copy / 'eval' / 'step_6.test.json').read_text())['split'] == 'test'
  assert report.parent == copy / 'eval' / 'step_6.test'


def test_config_fields_evaluate_does_not_read_are_refused(trained_run):
  _, workdir, _ = trained_run
  result = helpers.run_module(
    'medclip_jax.evaluate',
    f'--workdir={workdir}',
    '--config=configs/demo.py',
    '--config.data.dir=/elsewhere',
    '--config.eval.split=val',
  )
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'so --config.data.dir, --config.eval.split would be ignored' in result.stderr


def test_another_split_is_written_beside_the_runs_own_results_not_over_them(evaluated):
  copy, results, _, _, _ = evaluated
  own = (copy / 'eval' / 'step_12.json').read_text()
  _, val, report, _ = evaluate.evaluate(copy, split='val', only=['retrieval'])
  assert (copy / 'eval' / 'step_12.json').read_text() == own  # the test split's, kept
  saved = json.loads((copy / 'eval' / 'step_12.val.json').read_text())
  assert saved == {**val, 'split': 'val', 'step': 12}
  assert val['retrieval.gallery_size'] == 8 != results['retrieval.gallery_size']
  assert report == copy / 'eval' / 'step_12.val' / 'report.retrieval.html' and report.is_file()


def test_two_datasets_in_folders_of_one_name_keep_a_results_file_each(evaluated, trained_run):
  config, _, _ = trained_run
  copy = evaluated[0]
  sites = {}
  for site, records in (('siteA', 16), ('siteB', 8)):  # siteB's test split is smaller
    folder = copy.parent / site / 'prepared'
    shutil.copytree(config.data.dir, folder)
    info = json.loads((folder / 'dataset_info.json').read_text())
    info['splits']['test']['count'] = records
    (folder / 'dataset_info.json').write_text(json.dumps(info))
    _, results, report, _ = evaluate.evaluate(copy, data=str(folder), only=['retrieval'])
    sites[site] = (folder, results, report)
  files = sorted((copy / 'eval').glob('step_12.test-prepared*.json'))
  assert len(files) == 2
  for site, (folder, results, report) in sites.items():
    saved = [json.loads(f.read_text()) for f in files if str(folder) in f.read_text()]
    assert len(saved) == 1 and saved[0]['data'] == str(folder.resolve())
    assert {k: v for k, v in saved[0].items() if '.' in k} == results
    assert (
      report.parent.name == files[[str(folder) in f.read_text() for f in files].index(True)].stem
    )
  # Again on siteA: its own file, merged as --only merges.
  _, again, _, _ = evaluate.evaluate(copy, data=str(sites['siteA'][0]), only=['retrieval'])
  assert (
    again == sites['siteA'][1]
    and len(list((copy / 'eval').glob('step_12.test-prepared*.json'))) == 2
  )


def test_a_path_that_is_no_model_is_one_paragraph_and_exit_2(tmp_path):
  result = helpers.run_module('medclip_jax.evaluate', f'--workdir={tmp_path}')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'neither a training workdir' in result.stderr and 'export directory' in result.stderr


def test_a_split_the_dataset_lacks_is_a_user_error_naming_those_it_has(trained_run):
  _, workdir, _ = trained_run
  expected = (
    r"has no records in a 'validation' split \(its splits with records: test, train, val\); "
    'give one of them with --split'
  )
  with pytest.raises(UserError, match=expected):
    evaluate.evaluate(workdir, split='validation')
