"""Command line: export a training checkpoint as PyTorch-loadable weights.

  python -m medclip_jax.export --workdir=runs/demo [--step=N] --out=exported/demo

What it writes, and how to load it: `medclip_jax.interop.export`.
"""

from absl import app
from absl import flags

from medclip_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training run directory (holds checkpoints/).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported after flag parsing so that `--help` answers quickly.
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel

  out = export.export(_WORKDIR.value, _OUT.value, _STEP.value)
  print(f'exported to {out}')


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  flags.mark_flags_as_required(['workdir', 'out'])
  cli.run(main)


if __name__ == '__main__':
  console_main()
