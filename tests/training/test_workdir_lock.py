"""One trainer per workdir: the lock refuses a second holder and takes over a dead one's."""

import json
import os
import socket

import pytest

from medclip_jax.errors import UserError
from medclip_jax.training.workdir_lock import WorkdirLock


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path):
  first = WorkdirLock(str(tmp_path))
  assert first.acquire() is None
  with pytest.raises(UserError, match=rf'in use by another trainer: process {os.getpid()} on '):
    WorkdirLock(str(tmp_path)).acquire()
  first.release()
  with WorkdirLock(str(tmp_path)) as stale:
    assert stale is None  # released cleanly: nothing to take over


def test_the_lock_of_a_process_that_died_is_taken_over_and_named(tmp_path):
  # What a SIGKILLed trainer leaves: its description in the file, no flock held.
  (tmp_path / 'lock').write_text(
    json.dumps({'pid': 4242, 'host': socket.gethostname(), 'started': 0})
  )
  with WorkdirLock(str(tmp_path)) as stale:
    assert stale.startswith(f'process 4242 on {socket.gethostname()}, started ')
    holder = json.loads((tmp_path / 'lock').read_text())
    assert holder['pid'] == os.getpid()
