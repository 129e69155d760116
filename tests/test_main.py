"""The training command line: a user's mistake is one paragraph and exit status 2, not a traceback."""

import json
import os

import pytest

from medclip_jax.data import pipeline
from medclip_jax.data import prepare
from medclip_jax.training import checkpointing
from medclip_jax.errors import UserError
from tests import helpers


def test_missing_data_names_the_directory_and_suggests_only_a_command_that_fills_it(tmp_path):
  result = helpers.run_module(
    'medclip_jax.main',
    '--config=configs/medpix.py',
    f'--workdir={tmp_path}/run',
    f'--config.data.dir={tmp_path}/nothing',
  )
  out = result.stdout + result.stderr
  assert result.returncode == 2
  assert 'Traceback' not in out
  assert f'No prepared dataset found in {tmp_path}/nothing' in out
  # medpix.py's own command writes data/medpix, which would not fix this directory.
  assert '--output=data/medpix' not in out
  assert f'--format=manifest --input=FILE.csv --output={tmp_path}/nothing' in out
  assert not (tmp_path / 'run').exists()


def test_missing_data_in_the_configs_own_directory_suggests_its_prepare_command(tmp_path):
  data_config = helpers.data_config(
    dir=str(tmp_path / 'mine'),
    tfds_name='',
    prepare_command=f'python -m medclip_jax.data.prepare --format=medpix --output={tmp_path}/mine',
  )
  with pytest.raises(
    UserError, match='For this config run:\n  python -m medclip_jax.data.prepare --format=medpix'
  ):
    pipeline.dataset_info(data_config)


def test_warmup_longer_than_the_run_is_refused_before_anything_is_written(tmp_path, tiny_flags):
  workdir = tmp_path / 'run'
  result = helpers.run_module(
    'medclip_jax.main',
    *tiny_flags(train__steps=20, train__warmup_steps=40),
    f'--workdir={workdir}',
  )
  assert result.returncode == 2
  assert 'Traceback' not in result.stdout + result.stderr
  assert 'config.train.warmup_steps=40 does not fit the run' in result.stderr
  assert '--config.train.warmup_steps=2' in result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize(
  'flags, message',
  [
    # Each process would train alone, all of them in one workdir.
    (['--num_processes=2', '--process_id=1'], '--num_processes, --process_id take effect only '),
    (['--distributed', '--local_device_ids=0,a'], '--local_device_ids=0,a: give device numbers'),
    (['--workdir=gs://bucket/runs/x'], '--workdir=gs://bucket/runs/x: the workdir is a file'),
    (['--workdir={tmp}/notes/run'], '/notes is a file, not a directory: give a directory'),
    (['--distributed'], '--distributed: coordinator_address should be defined'),
    (['--workdir={tmp}/export'], 'holds an export (medclip.json): training there would'),
  ],
  ids=[
    'multi-process flags without --distributed',
    'device ids',
    'bucket workdir',
    'workdir under a file',
    'distributed outside a cluster',
    'workdir holding an export',
  ],
)
def test_launch_flags_that_would_start_another_run_than_meant_are_refused(
  tmp_path, tiny_flags, flags, message
):
  (tmp_path / 'notes').write_text('not a directory')
  helpers.write(tmp_path / 'export', 'medclip.json', b'{}')
  flags = [flag.format(tmp=tmp_path) for flag in flags]
  result = helpers.run_module(
    'medclip_jax.main', *tiny_flags(), f'--workdir={tmp_path}/run', *flags, timeout=60
  )
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_own_data_with_other_label_columns_trains_with_the_manifest_config(tmp_path, tiny_flags):
  raw, data, workdir = tmp_path / 'raw', tmp_path / 'mine', tmp_path / 'run'
  csv = helpers.write_labelled_manifest(raw, captions_per_image=2)  # two rows per image
  prepare.prepare('manifest', str(data), input=csv, **helpers.LABELLED_MANIFEST_OPTIONS)
  tiny = [f for f in tiny_flags() if not f.startswith(('--config=', '--config.data.dir='))]
  region_prompts = "('an axial image of the {}.', 'a scan of the {}.')"
  result = helpers.run_module(
    'medclip_jax.main',
    f'--config=configs/manifest.py:{data}',
    f'--workdir={workdir}',
    *tiny,
    '--config.train.steps=2',
    '--config.train.warmup_steps=1',
    f'--config.evals.zeroshot.templates.region={region_prompts}',
    timeout=300,
    # Where the compiled programs go by default, as for a user who set nothing.
    env={
      **{k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'},
      'XDG_CACHE_HOME': str(tmp_path / 'cache'),
    },
  )
  assert result.returncode == 0, result.stdout + result.stderr
  # The train step (and the encoders) kept for the next run of the same shapes.
  assert any((tmp_path / 'cache' / 'medclip_jax' / 'xla').iterdir())
  final = json.loads((workdir / 'eval' / 'step_2.json').read_text())
  for field in ('region', 'view'):  # every label column, none configured by hand
    assert 0.0 <= final[f'zeroshot.{field}.top1'] <= 1.0
  assert 'zeroshot.view.top3' not in final  # two classes
  saved = checkpointing.Checkpointer(str(workdir), keep=3, create=False).restore_config(2)
  assert saved['evals']['zeroshot']['templates']['region'] == [
    'an axial image of the {}.',
    'a scan of the {}.',
  ]
  assert 'warning' not in result.stdout


def test_a_misspelt_field_in_a_config_file_is_refused_with_the_nearest(tmp_path, tiny_flags):
  own = tmp_path / 'mine.py'
  own.write_text(
    'from configs import demo\n\ndef get_config():\n  config = demo.get_config()\n'
    '  config.train.learning_rat = 1e-2\n  return config\n'
  )
  flags = [f for f in tiny_flags() if not f.startswith('--config=')]
  result = helpers.run_module(
    'medclip_jax.main', f'--config={own}', *flags, f'--workdir={tmp_path}/run', timeout=60
  )
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert (
    'The config sets config.train.learning_rat (did you mean config.train.learning_rate?)'
    in result.stderr
  )
  assert not (tmp_path / 'run').exists()
