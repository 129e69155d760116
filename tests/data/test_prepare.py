"""Tests of medclip_jax.data.prepare: its options, skipped inputs, group leaks, progress and
the command line."""

import collections

import pytest

from medclip_jax.data import prepare
from medclip_jax.data import records
from tests.helpers import make_record
from tests.helpers import run_module
from tests.helpers import skipped_by_id
from tests.helpers import split_records
from tests.helpers import write_manifest


def test_prepare_rejects_unknown_format_and_options(tmp_path):
  with pytest.raises(prepare.OptionError, match='known formats: synthetic'):
    prepare.prepare('nope', str(tmp_path))
  with pytest.raises(prepare.OptionError, match='colour'):
    prepare.prepare('synthetic', str(tmp_path), colour=True)
  with pytest.raises(prepare.OptionError, match='num_val'):
    prepare.prepare('synthetic', str(tmp_path), num_val=-1)


def test_prepare_refuses_an_output_that_is_a_file(tmp_path):
  output = tmp_path / 'copy.csv'
  output.write_text('image,caption\n')
  with pytest.raises(prepare.OptionError, match=r"--output=.*copy\.csv' is a file; give the dir"):
    prepare.prepare('synthetic', str(output), num_train=1, num_val=1, num_test=1)
  assert output.read_text() == 'image,caption\n'


def test_prepare_reports_skips_and_refuses_group_leaks(tmp_path, monkeypatch):
  def fake_format(leak=False):
    def items():
      yield prepare.Skipped('bad-1', 'unreadable image')
      yield make_record(id='a', group='case-1', labels={'modality': 'CT'})
      yield make_record(id='b', group='case-1' if leak else 'case-2', labels={'modality': 'MRI'})

    return prepare.Source(
      records=items(),
      split_of=lambda r: 'train' if r['id'] == 'a' else 'test',
      labels={'modality': ['X-ray']},
    )

  monkeypatch.setitem(prepare.FORMATS, 'fake', fake_format)
  info = prepare.prepare('fake', str(tmp_path / 'ok'))
  assert info['skipped'] == [{'id': 'bad-1', 'reason': 'unreadable image'}]
  assert info['converted'] == 2
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 1, 'val': 0, 'test': 1}
  assert split_records(tmp_path / 'ok', 'val') == []  # empty, but present
  assert info['labels'] == {'modality': ['CT', 'MRI', 'X-ray']}
  with pytest.raises(ValueError, match='case-1'):
    prepare.prepare('fake', str(tmp_path / 'leak'), leak=True)
  with pytest.raises(FileNotFoundError):  # nothing half-written is left
    records.split_files(str(tmp_path / 'leak'), 'train')


def test_prepare_reports_progress_with_the_final_counts(tmp_path):
  calls = []
  info = prepare.prepare(
    'synthetic',
    str(tmp_path),
    num_train=5,
    num_val=1,
    num_test=1,
    image_size=32,
    progress=lambda converted, skipped: calls.append((converted, skipped)),
  )
  assert calls[-1] == (info['converted'], 0) == (7, 0)
  assert calls[:-1] == [(n, 0) for n in range(7)]  # before each input


# ----------------------------------------------------------------------------
# The command line.


def test_cli_unknown_format_fails_cleanly(tmp_path):
  result = run_module('medclip_jax.data.prepare', '--format=nope', f'--output={tmp_path}')
  assert result.returncode != 0
  output = result.stdout + result.stderr
  assert 'Traceback' not in output
  assert 'known formats: synthetic' in output
  assert len(result.stderr.strip().splitlines()) == 1


def test_cli_writes_dataset(tmp_path):
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=synthetic',
    f'--output={tmp_path}',
    '--num_train=3',
    '--num_val=2',
    '--num_test=1',
    '--image_size=32',
    '--seed=5',
  )
  assert result.returncode == 0, result.stderr
  assert 'train 3' in result.stdout and str(tmp_path) in result.stdout
  assert 'UTF-8' not in result.stdout  # no caption was repaired
  info = records.read_dataset_info(str(tmp_path))
  assert info['seed'] == 5
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 3, 'val': 2, 'test': 1}


def test_cli_refuses_flags_the_format_does_not_read(tmp_path):
  out = tmp_path / 'out'
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--input={tmp_path / "m.csv"}',
    f'--output={out}',
    '--image_size=32',
    '--num_train=5',
  )
  assert result.returncode == 2
  assert 'Traceback' not in result.stdout + result.stderr
  assert '--format=manifest does not read --image_size, --num_train' in result.stderr
  assert '--label_columns' in result.stderr  # what it does read
  assert not out.exists()


def test_cli_prints_the_commonest_skip_reasons_with_counts(tmp_path):
  manifest, good, bad = write_manifest(tmp_path)
  out = tmp_path / 'out'
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--input={manifest}',
    f'--output={out}',
    '--image_column=path',
    '--caption_column=text',
    '--max_bad_fraction=0.9',
  )
  assert result.returncode == 0, result.stderr
  reasons = collections.Counter(skipped_by_id(records.read_dataset_info(str(out))).values())
  top = ', '.join(f'{n} {reason}' for reason, n in reasons.most_common(3))
  assert f'{sum(reasons.values())} skipped ({top}' in result.stdout
  assert 'all listed in dataset_info.json' in result.stdout


def test_cli_says_how_many_captions_had_invalid_utf8_replaced_and_what_to_do(tmp_path):
  manifest, _, _ = write_manifest(tmp_path)  # one caption with invalid UTF-8
  result = run_module(
    'medclip_jax.data.prepare',
    '--format=manifest',
    f'--input={manifest}',
    f'--output={tmp_path / "out"}',
    '--image_column=path',
    '--caption_column=text',
    '--max_bad_fraction=0.9',
  )
  assert result.returncode == 0, result.stderr
  assert 'invalid UTF-8 replaced (by U+FFFD) in the captions of 1 record (' in result.stdout
  assert 'probably not UTF-8 (e.g. a CSV saved by Excel as cp1252)' in result.stdout
  assert 're-save it as UTF-8' in result.stdout


def test_prepare_refuses_an_output_it_cannot_create(tmp_path):
  (tmp_path / 'm.csv').write_text('image,caption\n')
  with pytest.raises(prepare.OptionError, match=r'm\.csv/prepared\' cannot be created: Not a dir'):
    prepare.prepare('synthetic', str(tmp_path / 'm.csv' / 'prepared'), num_train=1)


def test_an_info_that_cannot_be_written_leaves_the_earlier_dataset_as_it_was(tmp_path, monkeypatch):
  out = tmp_path / 'out'
  prepare.prepare('synthetic', str(out), num_train=2, num_val=1, num_test=1, image_size=32)
  before = {p.name: p.read_bytes() for p in out.iterdir()}

  def fake_format():
    # A format that forgot to clean a file name read from a Latin-1 file system.
    return prepare.Source(
      records=[make_record()], split_of=lambda r: 'train', info={'x': 'caf\udce9'}
    )

  monkeypatch.setitem(prepare.FORMATS, 'fake', fake_format)
  with pytest.raises(UnicodeEncodeError):
    prepare.prepare('fake', str(out))
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
