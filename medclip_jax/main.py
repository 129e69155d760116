"""Command line: `python -m medclip_jax.main --config=configs/demo.py [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.train.batch_size=64`.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import os
from pathlib import Path

from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs and evaluations (default: runs/<config file name>).',
)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Join a multi-process run with jax.distributed.initialize. Without the three '
  'flags below, the cluster is detected from the environment (SLURM, TPU pods, '
  'Open MPI, GKE).',
)
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index, 0..num_processes-1.')
flags.mark_flags_as_required(['config'])


def initialize_distributed() -> None:
  """Connects the processes of a multi-host run (each then sees every device)."""
  import jax  # pylint: disable=import-outside-toplevel

  if 'cpu' in os.environ.get('JAX_PLATFORMS', ''):
    # CPU devices in several processes talk over gloo (the local test cluster).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value or str(Path('runs') / Path(flags.FLAGS['config'].config_filename).stem)
  if _DISTRIBUTED.value:
    initialize_distributed()
  # Imported after flag parsing so that `--help` answers quickly.
  from medclip_jax.training import preemption  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  try:
    trainer.train_and_evaluate(_CONFIG.value, workdir)
  except preemption.Preempted as e:
    print(f'\n{e}', flush=True)  # a requested stop is a success: exit status 0


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  cli.run(main)


if __name__ == '__main__':
  console_main()
