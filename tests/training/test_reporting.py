"""metrics.jsonl on a rerun: the rows past the checkpoint go, and a row cut short does not stop
the run."""

import json
import re

import pytest

from medclip_jax.errors import UserError
from medclip_jax.training import reporting


def _rows(steps):
  return ''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n' for s in steps)


def test_a_last_row_cut_short_is_dropped_with_a_warning_naming_the_file(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(_rows(range(1, 8)) + '{"step": 8, "grad_norm": 29.5')  # the node lost
  reporter = reporting.Reporter(str(tmp_path), total_steps=12)
  reporter.drop_after(6)
  reporter.write(7, {'loss': 0.5})
  reporter.close()
  out = capsys.readouterr().out
  assert f'warning: dropped the last line of {path}, cut short' in out
  assert '\'{"step": 8, "grad_norm": 29.5\'' in out
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6, 7] and rows[-1]['loss'] == 0.5


def test_a_complete_last_row_without_its_newline_is_kept_and_the_next_row_starts_a_line(
  tmp_path, capsys
):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(_rows([1, 2]).rstrip('\n'))
  reporter = reporting.Reporter(str(tmp_path), total_steps=12)
  reporter.drop_after(2)
  reporter.write(3, {'loss': 0.5})
  reporter.close()
  assert 'warning' not in capsys.readouterr().out
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_an_unreadable_row_before_the_last_is_a_user_error_naming_the_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  text = _rows([1]) + '{"step": 2, "lo\n' + _rows([3])
  path.write_text(text)
  reporter = reporting.Reporter(str(tmp_path), total_steps=12)
  with pytest.raises(UserError, match=re.escape(f'{path}, line 2, is not a metrics row')) as error:
    reporter.drop_after(1)
  reporter.close()
  assert '\n' not in str(error.value) and 'Repair or remove that line' in str(error.value)
  assert path.read_text() == text  # left for the user to repair
