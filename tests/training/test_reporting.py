"""metrics.jsonl on a rerun: the rows past the checkpoint go, and a row cut short does not stop
the run."""

import json
import re
import struct

import pytest
from tensorboardX.proto import event_pb2

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


def _tensorboard_points(tb_dir) -> dict:
  """{(tag, step): value} as TensorBoard shows the event files: files in order, and a session
  start at step s hides the points of step s and later written before it."""
  points = {}
  for file in sorted(tb_dir.glob('events.out.tfevents.*')):
    data, at = file.read_bytes(), 0
    while at < len(data):  # TFRecord framing: length, its CRC, the event, its CRC
      (length,) = struct.unpack('<Q', data[at : at + 8])
      event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
      at += 16 + length
      if event.session_log.status == event_pb2.SessionLog.START:
        points = {key: value for key, value in points.items() if key[1] < event.step}
      for value in event.summary.value:
        points[(value.tag, event.step)] = value.simple_value
  return points


def test_tensorboard_shows_a_resumed_runs_steps_once_with_their_new_values(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=4)
  reporter.drop_after(0)
  for step in (1, 2, 3):  # killed after logging step 3, its checkpoint at step 2
    reporter.write(step, {'loss': 1.0})
  reporter.close()
  resumed = reporting.Reporter(str(tmp_path), total_steps=4)
  resumed.drop_after(2)
  for step in (3, 4):
    resumed.write(step, {'loss': 0.5})
  resumed.close()
  points = _tensorboard_points(tmp_path / 'tb')
  assert points == {('loss', 1): 1.0, ('loss', 2): 1.0, ('loss', 3): 0.5, ('loss', 4): 0.5}
  # A rerun of a finished run that logs nothing leaves no empty event file behind.
  files = sorted((tmp_path / 'tb').iterdir())
  reporting.Reporter(str(tmp_path), total_steps=4).close()
  assert sorted((tmp_path / 'tb').iterdir()) == files


def test_the_eta_counts_the_evaluations_left_once_one_was_timed(tmp_path, capsys, monkeypatch):
  clock = iter([0.0, 10.0, 30.0, 50.0])
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: next(clock))
  reporter = reporting.Reporter(str(tmp_path), total_steps=100, eval_every=25)
  reporter.start_timer(0)
  scalars = {'loss': 1.0, 'learning_rate': 1e-3}
  reporter.train_progress(10, scalars, batch_size=4)  # 1 step/s; evaluations at 25, 50, 75, 100
  reporter.evaluated(20.0)
  reporter.train_progress(30, scalars, batch_size=4)  # 70 steps and 3 evaluations of 20 s left
  reporter.train_progress(50, scalars, batch_size=4)  # step 50's own evaluation runs next
  reporter.close()
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].endswith('eta 1:30 + evaluations') and lines[1].endswith('eta 2:10')
  assert lines[2].endswith('eta 1:50')
