"""One trainer per workdir: the lock refuses a second holder and takes over a dead one's."""

import json
import os
import socket

import pytest

from medclip_jax.errors import UserError
from medclip_jax.training.workdir_lock import WorkdirLock
from tests import helpers


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


# Run as `python -c CODE FLAGS`: the trainer, waiting 1 s (not 60) for the workdir's marker.
_SHORT_WAIT = """
from medclip_jax import cli, main
from medclip_jax.training import workdir_lock
workdir_lock.SHARED_WAIT_S = 1.0
cli.run(main.main)
"""


def test_processes_that_do_not_share_the_workdir_are_refused_before_training(tmp_path, tiny_flags):
  port = 20000 + os.getpid() % 20000
  processes, logs = [], []
  for index in range(2):  # each with a workdir of its own, as on two hosts' local disks
    logs.append(tmp_path / f'process_{index}.log')
    processes.append(
      helpers.start_main(
        [
          *tiny_flags(),
          f'--workdir={tmp_path}/host{index}/run',
          '--distributed',
          f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2',
          f'--process_id={index}',
        ],
        logs[-1],
        code=_SHORT_WAIT,
      )  # fmt: skip
    )
  for process in processes:
    assert process.wait(timeout=240) == 2
  for log in logs:
    text = log.read_text()
    assert '--workdir: process(es) [1] do not see the workdir process 0 writes in' in text, text
    assert 'Traceback' not in text and 'training steps' not in text
