"""Tests of medclip_jax.data.workers: a data worker does not outlive its trainer (signals to
every process of the job: tests/training/test_preemption.py)."""

import os
import subprocess
import sys
import time

from tests import helpers

# A parent that starts one worker as grain does (spawned, then workers.init) and is killed
# outright, before it could stop it.
_PARENT = """
import multiprocessing, os, signal, sys, time
from medclip_jax.data import workers

def work(ready):
  workers.init(0, 1)
  ready.set()
  time.sleep(120)

if __name__ == '__main__':
  context = multiprocessing.get_context('spawn')
  ready = context.Event()
  child = context.Process(target=work, args=(ready,), daemon=True)
  child.start()
  if ready.wait(60) and child.is_alive():
    with open(sys.argv[1], 'w') as f:
      f.write(str(child.pid))
  os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def test_a_worker_whose_trainer_was_killed_exits(tmp_path):
  parent, pid = tmp_path / 'parent.py', tmp_path / 'worker.pid'
  parent.write_text(_PARENT)
  # Output to nowhere: the worker would hold a pipe open after its parent is gone.
  subprocess.run(
    [sys.executable, str(parent), str(pid)],
    check=False,  # the parent ends killed
    cwd=helpers.REPO,
    # A script's own folder heads sys.path, not the working directory.
    env={**os.environ, 'PYTHONPATH': str(helpers.REPO)},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    timeout=120,
  )
  assert pid.exists(), 'the worker did not start'
  child = int(pid.read_text())
  deadline = time.time() + 10
  while _alive(child) and time.time() < deadline:
    time.sleep(0.1)
  assert not _alive(child), f'worker {child} outlived its parent by 10 s'
