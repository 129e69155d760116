"""Stopping on request: SIGTERM or SIGINT ends training at a checkpoint every process agrees on.

The signal handler only records the request. The trainer sends each process's
request along with its next batch (a `stop` column) and the step returns its
maximum over the global batch, so a signal that reached any one process is
seen by all of them in the same step's metrics. The trainer reads those one
step later (the device is never idle waiting for the host), and every process
stops after the same step, writes a checkpoint there and exits 0. A second
signal exits at once, without a checkpoint. A signal after the last step waits
for the final checkpoint (with its recomputed BatchNorm statistics), then ends
the run before it evaluates; during the final evaluation, which follows that
checkpoint, a signal ends the run at once. Nothing is lost either way, and the
rerun evaluates that checkpoint.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on request at `step`, checkpointed; rerunning the command resumes it."""

  def __init__(self, step: int, directory):
    super().__init__(
      f'stopped on request at step {step}; checkpoint written to {directory}/{step}; '
      'rerun the same command to resume.'
    )
    self.step = step


class StopRequests:
  """A context in which SIGTERM and SIGINT set `requested` instead of ending the process;
  with `interrupt` (for when everything is checkpointed), they raise it at once."""

  def __init__(self, interrupt: Exception | None = None):
    self.requested = False
    self._interrupt = interrupt
    self._previous = {}

  def __enter__(self):
    # Handlers can only be installed from the main thread; elsewhere a signal
    # keeps its usual effect.
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self._interrupt is not None:
      print(f'{name} received: stopping now.', file=sys.stderr, flush=True)
      raise self._interrupt
    if self.requested:
      print(f'{name} again: exiting now, without a checkpoint.', file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access (no cleanup: at once)
    self.requested = True
    print(
      f'{name} received: stopping after this step with a checkpoint '
      '(a second signal exits at once).',
      file=sys.stderr,
      flush=True,
    )
