"""Command line: `python -m medclip_jax.main --config=configs/demo.py [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.train.batch_size=64`.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import sys
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from medclip_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs and evaluations (default: runs/<config file name>).',
)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax and grain log every file operation at INFO; --verbosity=0 shows it.
    logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or str(Path('runs') / Path(flags.FLAGS['config'].config_filename).stem)
  # Imported after flag parsing so that `--help` answers quickly.
  from medclip_jax import train  # pylint: disable=import-outside-toplevel

  try:
    train.train_and_evaluate(_CONFIG.value, workdir)
  except UserError as e:
    print(f'\nerror: {e}\n', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
