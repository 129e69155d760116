"""Tests of medclip_jax.cli: a mistake on any command's command line is one paragraph and
exit status 2, with the fix in it, and nothing is written."""

import pytest

from tests import helpers


def _refused(result):
  """The error paragraph of a refused command."""
  assert result.returncode == 2, result.stdout + result.stderr
  out = result.stdout + result.stderr
  assert 'Traceback' not in out
  paragraphs = [p for p in result.stderr.strip().split('\n\n') if p.strip()]
  assert len(paragraphs) == 1, result.stderr
  return paragraphs[0]


@pytest.mark.parametrize('overrides', [(), ('--config.train.steps=3',)])
def test_a_missing_config_file_names_it_and_the_shipped_configs(tmp_path, overrides):
  workdir = tmp_path / 'run'
  message = _refused(
    helpers.run_module(
      'medclip_jax.main', '--config=configs/nope.py', f'--workdir={workdir}', *overrides
    )
  )
  assert message.startswith('error: --config=configs/nope.py: there is no such config file')
  assert 'demo.py' in message and 'medpix.py' in message
  assert not workdir.exists()


def test_an_unknown_override_key_puts_the_suggestion_first(tmp_path):
  message = _refused(
    helpers.run_module(
      'medclip_jax.main',
      '--config=configs/demo.py',
      f'--workdir={tmp_path / "run"}',
      '--config.train.batchsize=8',
    )
  )
  assert message.startswith(
    'error: --config.train.batchsize=8: did you mean --config.train.batch_size?'
  )
  assert 'batch_size, cache_locked_text, checkpoint_every' in message  # the fields that do exist
  # A typo higher up the path is suggested with the rest of the path kept.
  message = _refused(
    helpers.run_module('medclip_jax.main', '--config=configs/demo.py', '--config.trian.steps=3')
  )
  assert 'did you mean --config.train.steps?' in message
  # A field that lives under another parent is found there.
  message = _refused(
    helpers.run_module(
      'medclip_jax.main',
      '--config=configs/demo.py',
      "--config.eval.zeroshot.templates.modality=('a {} image.',)",
    )
  )
  assert 'did you mean --config.evals.zeroshot.templates.modality?' in message


def test_a_value_of_the_wrong_type_says_what_the_field_takes():
  message = _refused(
    helpers.run_module(
      'medclip_jax.main', '--config=configs/demo.py', '--config.train.batch_size=abc'
    )
  )
  assert '--config.train.batch_size=abc' in message and 'takes a int' in message


def test_other_commands_answer_the_same_way(tmp_path):
  # evaluate's optional config file and export's required flags go through the same parser.
  message = _refused(
    helpers.run_module('medclip_jax.evaluate', f'--workdir={tmp_path}', '--config=configs/nope.py')
  )
  assert 'there is no such config file' in message
  message = _refused(helpers.run_module('medclip_jax.export', f'--workdir={tmp_path}'))
  assert '--out' in message
