"""What each data worker process (grain's `mp_prefetch`) does first: it leaves stopping to
the trainer.

Ctrl-C in a terminal signals the whole process group, and a cluster's scheduler (Slurm's
time limit, `scancel`, a Kubernetes eviction) may signal every process of the job: the
workers as well as the trainer. By Python's defaults a worker would die at once (with a
KeyboardInterrupt traceback for Ctrl-C) and leave its shared memory behind, while the
trainer, which stops at a checkpoint (`training/preemption.py`), may still need a batch
from it. So a worker ignores SIGINT and outlives a SIGTERM by a grace period, the 30 s
that Slurm and Kubernetes give by default before they kill; the trainer closes its
workers when it stops, well within it. A worker whose parent is gone (a trainer killed
outright) exits, since nothing else would stop it.
"""

import multiprocessing
from multiprocessing import connection
import os
import signal
import threading
import time

_SIGTERM_GRACE_S = 30.0
# How often a worker checks a SIGTERM's grace period (its parent's exit wakes it at once).
_POLL_S = 0.5


def init(index: int, count: int) -> None:
  """grain's `worker_init_fn`: called in each worker process before it reads anything."""
  del index, count
  terminated = threading.Event()
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
  threading.Thread(target=_watch, args=(terminated,), name='worker-watch', daemon=True).start()


def _watch(terminated: threading.Event) -> None:
  # Readable once the parent has exited, however it ended, even before this thread began.
  parent = multiprocessing.parent_process().sentinel
  deadline = None
  while not connection.wait([parent], timeout=_POLL_S):
    if deadline is None and terminated.is_set():
      deadline = time.monotonic() + _SIGTERM_GRACE_S
    if deadline is not None and time.monotonic() >= deadline:
      # As the SIGTERM itself would have: grain then reports a worker that ended, where
      # a clean exit would leave the trainer waiting for its batches.
      os._exit(128 + signal.SIGTERM)  # pylint: disable=protected-access
  os._exit(0)  # pylint: disable=protected-access (no parent: nothing of the worker's is kept)
