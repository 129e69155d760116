"""The training command line: a user's mistake is one paragraph and exit status 2, not a traceback."""

from tests import helpers


def test_medpix_without_data_explains_instead_of_a_traceback(tmp_path):
  result = helpers.run_module(
    'medclip_jax.main',
    '--config=configs/medpix.py',
    f'--workdir={tmp_path}',
    f'--config.data.dir={tmp_path}/nothing',
  )
  out = result.stdout + result.stderr
  assert result.returncode == 2
  assert 'Traceback' not in out
  assert 'No prepared dataset found' in out
  assert 'python -m medclip_jax.data.prepare --format=medpix' in out
