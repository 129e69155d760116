"""Stopping on request: SIGTERM checkpoints the step reached and exits 0, in one process or
in both of a two-process run when only one is signalled, and with data workers when every
process of the job is signalled; Ctrl-C to the local cluster script; a second signal exits
at once."""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from medclip_jax.errors import UserError
from medclip_jax.training import checkpointing
from medclip_jax.training import trainer
from tests import helpers

ENDLESS = {'train__steps': 100000, 'train__checkpoint_every': 1000}


def _stopped_at(log):
  found = re.search(r'stopped on request at step (\d+); checkpoint written to', log.read_text())
  assert found, log.read_text()
  return int(found.group(1))


def test_sigterm_checkpoints_the_step_reached_and_exits_0_and_a_busy_workdir_is_refused(
  tiny_flags, tiny_config, tmp_path
):
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  proc = helpers.start_main([f'--workdir={workdir}', *tiny_flags(**ENDLESS)], log)
  helpers.wait_until(lambda: max(helpers.training_rows(workdir), default=0) >= 3, [proc], [log])

  # A second trainer on the same workdir refuses, naming the first, and leaves it alone.
  with pytest.raises(UserError, match=rf'in use by another trainer: process {proc.pid} on '):
    trainer.train_and_evaluate(tiny_config(), str(workdir))

  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, log.read_text()
  step = _stopped_at(log)
  assert 'SIGTERM received: stopping after this step with a checkpoint' in log.read_text()
  assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() == step
  assert max(helpers.training_rows(workdir)) == step


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['ctrl_c', 'scheduler'])
def test_a_signal_to_every_process_of_the_job_stops_it_cleanly_with_data_workers(
  tiny_flags, tmp_path, signum
):
  # Ctrl-C signals the terminal's process group, a scheduler every process of the job:
  # the data workers as well, which must serve the trainer until it has checkpointed.
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  proc = helpers.start_main(
    [f'--workdir={workdir}', *tiny_flags(**ENDLESS, data__workers=2)],
    log,
    start_new_session=True,
  )
  helpers.wait_until(lambda: max(helpers.training_rows(workdir), default=0) >= 3, [proc], [log])
  os.killpg(proc.pid, signum)
  assert proc.wait(timeout=120) == 0, log.read_text()
  step = _stopped_at(log)
  assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() == step
  out = log.read_text()
  assert 'Traceback' not in out and 'leaked shared_memory' not in out, out


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tiny_flags, tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = tmp_path / 'run'
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = [
    helpers.start_main(
      [
        '--distributed',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
        f'--workdir={workdir}',
        *tiny_flags(**ENDLESS),
      ],
      logs[i],
      env={'XLA_FLAGS': helpers.xla_flags(1)},
    )
    for i in range(2)
  ]
  helpers.wait_until(lambda: max(helpers.training_rows(workdir), default=0) >= 3, procs, logs)
  procs[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 learns of it in the step
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=180) == 0, log.read_text()
  steps = [_stopped_at(log) for log in logs]
  assert steps[0] == steps[1], steps
  assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() == steps[0]


def test_ctrl_c_to_the_local_cluster_stops_every_process_at_one_checkpoint(tiny_flags, tmp_path):
  # The terminal's SIGINT reaches the script alone, which passes one SIGTERM to each process
  # (before, each got the SIGINT and then the SIGTERM: a second signal, no checkpoint).
  workdir, log = tmp_path / 'run', tmp_path / 'cluster.log'
  with open(log, 'w', encoding='utf-8') as out:
    script = subprocess.Popen(
      ['bash', 'launch/local_cpu_cluster.sh', '2', f'--workdir={workdir}', *tiny_flags(**ENDLESS)],
      cwd=helpers.REPO,
      env={**os.environ, 'PYTHON': sys.executable, 'LOG_DIR': str(tmp_path / 'logs')},
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
      # As from a terminal: a shell started where SIGINT is ignored (a job put in the
      # background without job control, as some CI runners do) cannot trap it.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
  try:
    helpers.wait_until(lambda: max(helpers.training_rows(workdir), default=0) >= 3, [script], [log])
    os.killpg(script.pid, signal.SIGINT)
    assert script.wait(timeout=180) == 0, log.read_text()
  finally:
    if script.poll() is None:  # the script passes a SIGTERM on to each process
      script.terminate()
      script.wait(timeout=120)
  steps = [_stopped_at(path) for path in (log, tmp_path / 'logs' / 'process_1.log')]
  assert steps[0] == steps[1], steps
  assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() == steps[0]


def test_a_second_signal_exits_at_once():
  code = (
    'import os, signal, time\n'
    'from medclip_jax.training import preemption\n'
    'with preemption.StopRequests() as requests:\n'
    '  os.kill(os.getpid(), signal.SIGTERM)\n'
    '  time.sleep(0.5)\n'
    '  print("requested:", requests.requested, flush=True)\n'
    '  os.kill(os.getpid(), signal.SIGINT)\n'
    '  time.sleep(30)\n'
    'print("not reached")\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=helpers.REPO, capture_output=True, text=True, timeout=60
  )
  assert out.returncode == 128 + signal.SIGINT, out
  assert out.stdout == 'requested: True\n'
  assert 'SIGINT again: exiting now, without a checkpoint.' in out.stderr
