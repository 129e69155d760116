"""Progress lines, `metrics.jsonl` and TensorBoard events (process 0 only)."""

import json
import math
import sys
import time
from pathlib import Path

import jax

from medclip_jax.errors import UserError


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


def _row(line: str) -> dict | None:
  """A metrics.jsonl row, or None where `line` is not one."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  return row if isinstance(row, dict) else None


class Reporter:
  """Writes scalars to `WORKDIR/metrics.jsonl` and `WORKDIR/tb`, prints progress."""

  def __init__(self, workdir: str, total_steps: int, eval_every: int = 0):
    """`eval_every`: the steps between periodic evaluations (0: the final one only), which
    the ETA counts in once one has been timed."""
    self.total_steps = total_steps
    self._eval_every = eval_every
    self._eval_seconds = None  # the last evaluation's duration
    self.is_main = jax.process_index() == 0
    self._jsonl = None
    self._tb = None  # opened at the first row: a rerun of a finished run leaves no empty file
    self._tb_dir = Path(workdir) / 'tb'
    self._purge_step = None
    if self.is_main:
      Path(workdir).mkdir(parents=True, exist_ok=True)
      self._jsonl = open(Path(workdir) / 'metrics.jsonl', 'a', encoding='utf-8')
    self._mark_step = None
    self._mark_time = None

  def drop_after(self, step: int) -> None:
    """Removes the rows of steps after `step` from metrics.jsonl: a resumed run trains them
    again (a killed run logged steps past its last checkpoint), and writes them once more.

    A last row cut short (the run stopped while writing it) is dropped with a warning;
    an unreadable row before it raises `UserError`.
    """
    if not self.is_main:
      return
    # TensorBoard keeps its files as written: it is told to discard their points after `step`.
    self._purge_step = step + 1 if step else None
    path = Path(self._jsonl.name)
    text = path.read_text(encoding='utf-8', errors='replace')
    numbered = [
      (n, line, _row(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()
    ]
    for n, line, row in numbered[:-1]:
      if row is None:
        raise UserError(
          f'{path}, line {n}, is not a metrics row ({line[:80]!r}): a run that stops while '
          'writing can cut short only the last line, so something else changed this file. '
          'Repair or remove that line (each line is one JSON object with its "step"), then '
          'rerun the same command to resume.'
        )
    if numbered and numbered[-1][2] is None:
      self.info(
        f'warning: dropped the last line of {path}, cut short by a run that stopped while '
        f'writing it: {numbered[-1][1][:80]!r}'
      )
    kept = ''.join(
      f'{line}\n' for _, line, row in numbered if row is not None and row.get('step', 0) <= step
    )
    # Rewritten also for a last row without its newline: the next row goes on a line of its own.
    if kept != text:
      self._jsonl.close()
      path.write_text(kept, encoding='utf-8')
      self._jsonl = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def evaluated(self, seconds: float) -> None:
    """Records how long an evaluation took (BatchNorm recompute included), for the ETA."""
    self._eval_seconds = seconds

  def _evals_left(self, step: int) -> int:
    """The evaluations still to run once `step` is trained: the periodic ones from `step` (the
    trainer evaluates after printing it) before the end, and the final one."""
    every, total = self._eval_every, self.total_steps
    periodic = (total - 1) // every - (step - 1) // every if every else 0
    return periodic + (step < total)

  def start_timer(self, step: int) -> None:
    """Starts the throughput clock (call after warm-up/compilation)."""
    self._mark_step, self._mark_time = step, time.perf_counter()

  def write(self, step: int, scalars: dict) -> None:
    if not self.is_main:
      return
    row = {'step': int(step), **{k: None if v is None else float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      # The suffix keeps a file of each run in the same second apart, in the order written.
      self._tb = SummaryWriter(
        str(self._tb_dir), purge_step=self._purge_step, filename_suffix=f'.{time.time_ns()}'
      )
    for key, value in scalars.items():
      if value is not None:
        self._tb.add_scalar(key, float(value), int(step))
    self._tb.flush()

  def train_progress(self, step: int, scalars: dict, batch_size: int) -> None:
    """Logs a training step's scalars with throughput and ETA."""
    now = time.perf_counter()
    scalars = dict(scalars)
    # No rate until the clock has run over at least one step after compiling.
    rate = float('nan')
    scalars['pairs_per_sec'] = None
    if self._mark_step is not None and step > self._mark_step:
      rate = (step - self._mark_step) / (now - self._mark_time)
      scalars['pairs_per_sec'] = rate * batch_size
    self._mark_step, self._mark_time = step, now
    self.write(step, scalars)
    if self.is_main:
      eta = (self.total_steps - step) / rate if rate > 0 else float('nan')
      evals = self._evals_left(step)
      if evals and self._eval_seconds is not None:
        eta += evals * self._eval_seconds
      pairs = '-' if math.isnan(rate) else f'{rate * batch_size:.1f}'
      loss = 'skipped' if scalars['loss'] is None else f'{scalars["loss"]:.4f}'
      skipped = f'  skipped {scalars["skipped_total"]}' if scalars.get('skipped_total') else ''
      print(
        f'step {step:>6}/{self.total_steps}  loss {loss}  '
        f'lr {scalars["learning_rate"]:.2e}  pairs/s {pairs}  '
        f'eta {_format_duration(eta)}'
        + (' + evaluations' if evals and self._eval_seconds is None else '')
        + skipped,
        flush=True,
      )

  def info(self, message: str) -> None:
    if self.is_main:
      print(message, file=sys.stdout, flush=True)

  def close(self) -> None:
    if self.is_main:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
