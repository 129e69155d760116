"""The training command line: a user's mistake is one paragraph and exit status 2, not a traceback."""

import pytest

from medclip_jax.data import pipeline
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
  assert 'config.train.warmup_steps=40 is longer than the run' in result.stderr
  assert '--config.train.warmup_steps=2' in result.stderr
  assert not workdir.exists()
