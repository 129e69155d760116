"""One trainer per workdir: an exclusive lock on WORKDIR/lock while a run trains.

The lock is an `flock` on the file, which the kernel releases when its process
dies however it dies, so a lock left by a killed run is never in the way; the
file names its holder (host, pid, start time) for the message a second trainer
gets, and for the note that a stale lock was taken over. In a multi-process
run process 0 holds it for all, and every process learns whether it got it.
"""

import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np

from medclip_jax.errors import UserError


# How long a process waits for the workdir's marker to appear before it says it cannot see it.
SHARED_WAIT_S = 60.0


def _describe(holder: str) -> str:
  try:
    info = json.loads(holder)
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))
    return f'process {info["pid"]} on {info["host"]}, started {started}'
  except (ValueError, KeyError, TypeError):
    return 'a process that left no description'


class WorkdirLock:
  """`acquire()` takes the lock or raises `UserError`; `release()` gives it back.

  As a context manager it holds the lock for the block and gives what `acquire` returns.
  """

  def __init__(self, workdir: str):
    self.path = Path(workdir) / 'lock'
    self._file = None

  def acquire(self) -> str | None:
    """Takes the lock; returns a description of the killed run whose lock it took over."""
    taken, stale, holder = True, None, ''
    if jax.process_index() == 0:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      f = open(self.path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
      f.seek(0)
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = f.read()
        f.close()
        taken = False
      else:
        previous = f.read().strip()
        stale = _describe(previous) if previous else None
        f.seek(0)
        f.truncate()
        f.write(
          json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()})
        )
        f.flush()
        self._file = f
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      taken = bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))
    if not taken:
      who = _describe(holder) if jax.process_index() == 0 else 'another trainer (seen by process 0)'
      raise UserError(
        f'{self.path.parent} is in use by another trainer: {who}. Wait for it to finish or '
        'stop it (SIGTERM checkpoints and exits), or give this run another --workdir.'
      )
    if jax.process_count() > 1:
      self._check_shared()
    return stale

  def _check_shared(self) -> None:
    """Raises `UserError` on every process unless each sees the file process 0 writes in the
    workdir: every process writes its shards of each checkpoint there, and one on a disk of
    its own would fail only at the first save, after its steps were trained for nothing."""
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    token = int(
      multihost_utils.broadcast_one_to_all(np.int32((time.time_ns() + os.getpid()) % 2**31))
    )
    marker = self.path.parent / f'.shared_{token}'
    if jax.process_index() == 0:
      with open(marker, 'w', encoding='utf-8') as f:
        f.flush()
        os.fsync(f.fileno())
    multihost_utils.sync_global_devices('workdir marker written')
    # A network file system may show a new file to other hosts only after its caches expire.
    deadline = time.monotonic() + SHARED_WAIT_S
    while not marker.exists() and time.monotonic() < deadline:
      time.sleep(1.0)
    seen = multihost_utils.process_allgather(np.int32(marker.exists()))
    multihost_utils.sync_global_devices('workdir marker read')
    if jax.process_index() == 0:
      marker.unlink(missing_ok=True)
    blind = [int(i) for i in np.flatnonzero(np.asarray(seen) == 0)]
    if blind:
      raise UserError(
        f'--workdir: process(es) {blind} do not see the workdir process 0 writes in '
        f'({self.path.parent.absolute()}). Every process writes its part of each checkpoint '
        'there, so it must be one directory that every host sees at the same path (a shared '
        'file system; a relative --workdir is relative to the directory each host starts in).'
      )

  def release(self) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # an empty file: released, not left by a killed run
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> str | None:
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False
