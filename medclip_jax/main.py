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
from medclip_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs and evaluations (default: runs/<config file name>, or '
  'runs/<DIR name> for a config given a directory, configs/manifest.py:DIR).',
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
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
  'local_device_ids',
  None,
  'The local accelerators this process drives, e.g. 0,1,2,3. Needed under SLURM with one '
  'process per node (launch/slurm_gpu.sbatch sets it): JAX would give each process only '
  'the GPU numbered by its local task id.',
)
flags.mark_flags_as_required(['config'])
_DISTRIBUTED_ONLY = (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _LOCAL_DEVICE_IDS)


def initialize_distributed() -> None:
  """Connects the processes of a multi-host run (each then sees every device)."""
  import jax  # pylint: disable=import-outside-toplevel

  if 'cpu' in os.environ.get('JAX_PLATFORMS', ''):
    # CPU devices in several processes talk over gloo (the local test cluster).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      local_device_ids=local_device_ids(_LOCAL_DEVICE_IDS.value),
    )
  except ValueError as e:  # what JAX cannot work out from the flags and the cluster
    raise UserError(
      f'--distributed: {e} Outside a cluster JAX detects (SLURM, a TPU pod, Open MPI), give '
      '--coordinator_address=HOST:PORT, --num_processes=N and --process_id=I (0 to N-1) to '
      'every process; launch/README.md shows each launcher.'
    ) from e


def local_device_ids(values: list[str] | None) -> list[int] | None:
  """--local_device_ids as numbers."""
  if values is None:
    return None
  if not all(v.strip().isdigit() for v in values):
    raise UserError(f'--local_device_ids={",".join(values)}: give device numbers, e.g. 0,1')
  return [int(v) for v in values]


def check_flags(workdir: str) -> None:
  """Refuses flags that would start a run other than the one meant."""
  given = [f'--{f.name}' for f in _DISTRIBUTED_ONLY if f.present]
  if given and not _DISTRIBUTED.value:
    # Each process would train alone, all of them in the same workdir.
    raise UserError(f'{", ".join(given)} take effect only with --distributed: add it.')
  if '://' in workdir:
    raise UserError(
      f'--workdir={workdir}: the workdir is a file system path. For a bucket, mount it on '
      'every host at the same path (e.g. with gcsfuse) and give that path.'
    )
  if (Path(workdir) / 'medclip.json').is_file():
    raise UserError(
      f'--workdir={workdir} holds an export (medclip.json): training there would leave every '
      'loader reading the export, not the run. To start from that model, give a new --workdir '
      f'and --config.init_from={workdir}.'
    )
  taken = next((p for p in (Path(workdir), *Path(workdir).absolute().parents) if p.exists()), None)
  if taken is not None and not taken.is_dir():
    raise UserError(
      f'--workdir={workdir}: {taken} is a file, not a directory: give a directory for the '
      "run's checkpoints and logs (a new one, or the run's to resume)."
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value or str(Path('runs') / Path(flags.FLAGS['config'].config_filename).stem)
  check_flags(workdir)
  if _DISTRIBUTED.value:
    initialize_distributed()
  # Imported after flag parsing so that `--help` answers quickly.
  from medclip_jax.training import checks  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import preemption  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  try:
    from configs import default  # pylint: disable=import-outside-toplevel
  except ImportError:
    default = None  # a config built without configs/default.py: nothing to compare with
  if default is not None:
    checks.check_fields(_CONFIG.value, default.get_config())

  try:
    trainer.train_and_evaluate(_CONFIG.value, workdir)
  except preemption.Preempted as e:
    print(f'\n{e}', flush=True)  # a requested stop is a success: exit status 0


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  cli.run(main)


if __name__ == '__main__':
  console_main()
