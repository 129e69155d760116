"""Tests of medclip_jax.cli: a mistake on any command's command line is one paragraph and
exit status 2, with the fix in it, and nothing is written; a command restarts itself with
huge pages for glibc's large blocks unless the user set GLIBC_TUNABLES."""

import json
import os
import subprocess
import sys

import pytest

from medclip_jax import cli
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


def test_a_directory_after_a_recipe_that_takes_none_says_where_it_goes(tmp_path):
  workdir = tmp_path / 'run'
  message = _refused(
    helpers.run_module(
      'medclip_jax.main', '--config=configs/medpix.py:data/medpix', f'--workdir={workdir}'
    )
  )
  assert message == (
    'error: --config=configs/medpix.py:data/medpix: configs/medpix.py takes no argument after '
    '":". Give --config=configs/medpix.py, and the data directory with --config.data.dir=DIR '
    '(configs/manifest.py is the recipe that takes one: configs/manifest.py:DIR).'
  )
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


# A command that reports, from inside cli.run, its process id, its GLIBC_TUNABLES, its
# arguments, how much of a 64 MiB block from malloc (ctypes, not numpy, which
# advises huge pages itself) the kernel backs with huge pages, and whether that
# block lies in glibc's main heap rather than in a mapping of its own.
_PROBE = """
import ctypes, json, os
from medclip_jax import cli

def main(argv):
  block = ctypes.create_string_buffer(64 << 20)
  with open('/proc/self/smaps_rollup') as f:
    huge = sum(int(l.split()[1]) for l in f if l.startswith('AnonHugePages:'))
  with open('/proc/self/maps') as f:  # the heap may span several lines
    heap = [l.split()[0].split('-') for l in f if l.rstrip().endswith('[heap]')]
  heap = [(int(start, 16), int(end, 16)) for start, end in heap]
  address = ctypes.addressof(block)
  print(json.dumps({'pid': os.getpid(), 'tunables': os.environ.get('GLIBC_TUNABLES'),
                    'added': cli.added_environment(), 'argv': argv, 'huge_kib': huge,
                    'in_heap': any(start <= address < end for start, end in heap)}))

cli.run(main)
"""


def _probe(tmp_path, **env):
  script = tmp_path / 'probe.py'
  script.write_text(_PROBE)
  dropped = {'GLIBC_TUNABLES', 'MEDCLIP_JAX_ADDED_GLIBC_TUNABLES'}
  environ = {k: v for k, v in os.environ.items() if k not in dropped}
  proc = subprocess.Popen(
    [sys.executable, str(script), 'one', 'two'],
    cwd=helpers.REPO,
    env={**environ, 'PYTHONPATH': helpers.REPO, **env},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, out + err
  return proc.pid, json.loads(out.strip().splitlines()[-1])


def test_a_command_restarts_itself_with_glibcs_allocator_set_for_xla_cpu(tmp_path):
  pid, seen = _probe(tmp_path)  # helpers' environment: JAX_PLATFORMS=cpu
  assert seen['argv'][1:] == ['one', 'two']
  assert seen['pid'] == pid  # exec: a launcher's signals still reach the command
  if cli.glibc_tunables() == '':  # this machine's libc does not qualify
    assert seen['tunables'] is None
    return
  assert seen['tunables'] == cli.glibc_tunables()
  assert seen['added'] == ['GLIBC_TUNABLES', 'MEDCLIP_JAX_ADDED_GLIBC_TUNABLES']
  assert seen['in_heap']  # reused from step to step, not mapped afresh
  if cli.huge_pages_help():  # the kernel leaves huge pages to madvise
    assert seen['huge_kib'] >= 32 << 10


def test_on_an_accelerator_large_blocks_are_mapped_as_glibc_does_by_default(tmp_path):
  _, seen = _probe(tmp_path, JAX_PLATFORMS='cuda')
  assert not seen['in_heap']
  assert seen['tunables'] == (cli.HUGE_PAGES_TUNABLE if cli.huge_pages_help() else None)


@pytest.mark.parametrize(
  'platforms, cpu', [('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False)]
)
def test_runs_on_cpu_follows_jax_platforms(platforms, cpu):
  assert cli.runs_on_cpu({'JAX_PLATFORMS': platforms}) == cpu


def test_runs_on_cpu_without_jax_platforms_unless_an_accelerator_plugin_is_installed(monkeypatch):
  assert cli.runs_on_cpu({})  # this machine has none
  plugins = {'jax_plugins': ['xla_cuda12']}
  monkeypatch.setattr(cli.importlib.metadata, 'entry_points', lambda group: plugins.get(group, []))
  assert not cli.runs_on_cpu({})


def test_glibc_tunables_the_user_set_are_left_alone(tmp_path):
  _, seen = _probe(tmp_path, GLIBC_TUNABLES='glibc.malloc.arena_max=2')
  assert seen['tunables'] == 'glibc.malloc.arena_max=2'
  assert seen['added'] == []
  assert seen['huge_kib'] < 32 << 10
  _, seen = _probe(tmp_path, GLIBC_TUNABLES='')  # the way to opt out
  assert seen['tunables'] == ''


@pytest.mark.parametrize(
  'setting, helps',
  [('always [madvise] never\n', True), ('[always] madvise never\n', False), (None, False)],
)
def test_huge_pages_only_where_the_kernel_leaves_them_to_madvise(tmp_path, setting, helps):
  path = tmp_path / 'enabled'
  if setting is not None:
    path.write_text(setting)
  assert cli.huge_pages_help(thp_setting=str(path)) == helps


def test_no_restart_without_a_program_file(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['-c'])
  environ = {}
  assert cli.glibc_restart(environ) is None
  assert not environ


def test_a_config_file_imports_its_own_package_from_any_directory(tmp_path):
  # As an installed command runs a lab's configs: a package beside nothing on the path.
  package = tmp_path / 'lab' / 'labconfigs'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'base.py').write_text(
    'from configs import demo\n\ndef get_config():\n  return demo.get_config()\n'
  )
  (package / 'mine.py').write_text(
    'from labconfigs import base\n\ndef get_config():\n'
    f'  config = base.get_config()\n  config.data.dir = {str(tmp_path / "no_data")!r}\n'
    '  return config\n'
  )
  result = subprocess.run(
    [sys.executable, '-m', 'medclip_jax.main', f'--config={package / "mine.py"}',
     f'--workdir={tmp_path / "run"}'],
    cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(helpers.REPO)},
    capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert 'No prepared dataset found in' in _refused(result)  # the config loaded
