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

import os
import signal
import threading
import time

_SIGTERM_GRACE_S = 30.0
# How often a worker checks on its parent and on a SIGTERM's grace period.
_POLL_S = 0.5


def init(index: int, count: int) -> None:
  """grain's `worker_init_fn`: called in each worker process before it reads anything."""
  del index, count
  parent = os.getppid()
  terminated = threading.Event()
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
  threading.Thread(
    target=_watch, args=(parent, terminated), name='worker-watch', daemon=True
  ).start()


def _watch(parent: int, terminated: threading.Event) -> None:
  deadline = None
  while os.getppid() == parent and (deadline is None or time.monotonic() < deadline):
    if deadline is None and terminated.is_set():
      deadline = time.monotonic() + _SIGTERM_GRACE_S
    time.sleep(_POLL_S)
  os._exit(0)  # pylint: disable=protected-access (nothing of the worker's is kept)
