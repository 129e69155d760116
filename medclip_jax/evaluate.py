"""Command line: evaluate a trained model and write its results and report.

  python -m medclip_jax.evaluate --workdir=runs/demo [--step=N] [--split=test] [--data=DIR]
      [--config=configs/demo.py] [--only=caption,linear_probe]

--workdir is a training workdir (its latest checkpoint, or --step) or an
export directory. The evaluators are the run's own `config.evals`, or those of
--config (whose evals can be overridden as in training, e.g.
--config.evals.caption.top_k=5; of the rest of --config only
eval.batch_size is read); --only keeps some of them by name. The data
is the run's (`config.data`), or the prepared directory --data. Writes
WORKDIR/eval/step_<N>.json (flat keys, as training does),
WORKDIR/eval/step_<N>/report.html and the evaluators' files beside it
(e.g. captions.jsonl), and prints the table. Another split than the run's
`config.eval.split` (or than the one an intermediate step was evaluated on
during training), or --data, is written beside them, not over them:
step_<N>.<split>.json and step_<N>.<split>/ (with --data,
`<split>-<the data directory's name>`). With --only, the other evaluators'
results of that step are kept and the report of those run goes to
report.<names>.html.
"""

import hashlib
import sys
from pathlib import Path

from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.errors import UserError


def evaluate(
  workdir, step=None, split=None, data=None, evals=None, only=None, batch_size=None
) -> tuple:
  """Evaluates the model in `workdir`; returns (loaded model, results, report path, notes)."""
  # Imported here so that --help answers quickly.
  from medclip_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from medclip_jax.data import records  # pylint: disable=import-outside-toplevel
  from medclip_jax.evaluation import report  # pylint: disable=import-outside-toplevel
  from medclip_jax.evaluation import results as results_lib  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import setup  # pylint: disable=import-outside-toplevel

  loaded = load.load(workdir, step)
  config = loaded.config
  # The run's own final evaluation keeps its files; another split or dataset's go beside them,
  # named by the dataset's folder (and, if another dataset there took that name, its path's
  # digest: two sites' 'prepared' folders keep two files).
  name = ''
  if data or (split and split != config.eval.split):
    name = split or config.eval.split
  if data:
    data = str(Path(data).resolve())
    name += f'-{Path(data).name}'
    if results_lib.recorded(str(workdir), loaded.step, name, 'data') not in (None, data):
      name += '-' + hashlib.sha256(data.encode()).hexdigest()[:8]
  if evals is not None:
    config.evals = evals
  if only:
    unknown = sorted(set(only) - set(config.evals))
    if unknown:
      raise UserError(
        f'--only names {unknown}, which config.evals has not: {sorted(config.evals)}.'
      )
    off = [n for n in only if dict(config.evals[n]).get('type') == 'off']
    if off:
      raise UserError(
        f'--only names {off}, which config.evals switches off (type off). Switch it on: '
        f'--config=CONFIG_FILE --config.evals.{off[0]}.type=<its type, e.g. {off[0]}>.'
      )
    config.evals = {name: config.evals[name] for name in only}
  if data:
    config.data.dir, config.data.tfds_name = str(data), ''
  if split:
    config.eval.split = split
  if batch_size:
    config.eval.batch_size = batch_size
  # An intermediate step's file may hold training's periodic results on another split.
  if not name and results_lib.recorded(str(workdir), loaded.step) not in (
    None,
    config.eval.split,
  ):
    name = config.eval.split
  info = pipeline.dataset_info(config.data)
  if not info.get('splits', {}).get(config.eval.split, {}).get('count'):
    raise UserError(
      f'The dataset {config.data.tfds_name or config.data.dir} has no records in a '
      f'{config.eval.split!r} split (its splits with records: '
      f'{records.splits_with_records(info)}); give one of them with --split.'
    )
  evaluation = setup.evaluation(config, info.get('labels', {}))
  evaluation.check_data()
  results, details = evaluation(evaluation.place(loaded.variables))
  report_name, reported = 'report.html', results
  if only:  # the other evaluators' results of this step stay; their report is left as it was
    saved = results_lib.read(str(workdir), loaded.step, config.eval.split, name)
    results = {**{k: v for k, v in saved.items() if k.split('.', 1)[0] not in only}, **results}
    report_name = f'report.{"+".join(only)}.html'
  results_lib.write(
    str(workdir), loaded.step, config.eval.split, results, details, name, data or ''
  )
  path = report.write(
    results_lib.step_dir(str(workdir), loaded.step, name) / report_name,
    step=loaded.step,
    split=config.eval.split,
    model=loaded.describe(),
    results=reported,
    details=details,
  )
  notes = [f'warning: {w}' for w in evaluation.warnings] + [
    f'{name}: unavailable: {d["unavailable"]}' for name, d in details.items() if 'unavailable' in d
  ]
  return loaded, results, path, notes


def _define_flags():
  # Defined only when run as the command, so that importing `evaluate` defines no flags.
  flags.DEFINE_string('workdir', None, 'Training workdir or export directory.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_string('split', None, 'Split to evaluate (default: config.eval.split).')
  flags.DEFINE_string('data', None, "A prepared dataset directory (default: the run's).")
  flags.DEFINE_list('only', None, 'Run only these config.evals entries, by name.')
  config_flags.DEFINE_config_file(
    'config', None, "A config file whose evals (and eval.batch_size, if given) replace the run's."
  )
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  ignored = [
    a.split('=')[0]
    for a in sys.argv[1:]
    if a.startswith('--config.')
    and not a.startswith(('--config.evals.', '--config.eval.batch_size'))
  ]
  if ignored:
    raise UserError(
      f'evaluate reads only config.evals and config.eval.batch_size of --config, so '
      f'{", ".join(ignored)} would be ignored: the model, its data and preprocessing are the '
      "trained run's. Give another prepared dataset with --data and another split with --split."
    )
  loaded, results, path, notes = evaluate(
    FLAGS.workdir,
    FLAGS.step,
    FLAGS.split,
    FLAGS.data,
    None if FLAGS.config is None else FLAGS.config.evals,
    FLAGS.only,
    # Only when given: the config file's own value was not chosen for this machine.
    FLAGS.config.eval.batch_size
    if any(a.startswith('--config.eval.batch_size') for a in sys.argv)
    else None,
  )
  from medclip_jax.evaluation import results as results_lib  # pylint: disable=import-outside-toplevel

  print(f'evaluated {loaded.describe()}')
  print(results_lib.format_table(loaded.step, results))
  for note in notes:
    print(note)
  # The results file sits beside the folder of the report (results.step_dir, results.path).
  print(f'results: {path.parent.with_name(path.parent.name + ".json")}\nreport: {path}')


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
