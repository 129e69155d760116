"""Command line: the seeds' comparison, a starting model against it fine-tuned on captions and on labels.

  python -m medclip_jax.compare --config=configs/demo.py --init=runs/demo --workdir=runs/compare

As the PubMedVision study does: the model in --init (a training workdir or an
export) is fine-tuned twice on the config's prepared data, for
`config.compare.steps` steps each, once pairing images with their captions and
once with text built from their labels (`config.compare.label_text`, e.g.
'{modality} of the {body_part}.'; '' joins every label field), then all three
are evaluated by the config's evaluators on the same split. Writes
WORKDIR/compare.json, WORKDIR/compare.md (one table: top-1/top-3 per label
field, retrieval R@10, caption metrics) and WORKDIR/compare.png (per-class
zero-shot accuracy of the three models), and prints the table. The two
fine-tuning runs live in WORKDIR/captions and WORKDIR/labels: rerunning the
command resumes them, under the settings it started with
(WORKDIR/compare_settings.json: the starting model and its step, the steps, the
label text, the data and the evaluators); other settings are refused.
"""

import json
import sys
from pathlib import Path

from absl import app
from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.errors import UserError
from medclip_jax.training import preemption

MODELS = ('start', 'captions', 'labels')


def _columns(results: dict) -> list[str]:
  """The table's keys: zero-shot top-1/top-3 per field, retrieval R@10, caption metrics."""
  keys = [k for k in results if k.endswith(('.top1', '.top3'))]
  keys += [k for k in results if k.endswith(('i2t.R@10', 't2i.R@10'))]
  keys += [k for k in results if k.split('.')[-1] in ('bleu4', 'meteor', 'rouge_l', 'cider_d')]
  return [k for k in keys if '.random.' not in k and '.oracle.' not in k]


def table(rows: dict) -> str:
  """A markdown table, one row per model, of the keys every model has."""
  columns = [k for k in _columns(rows[MODELS[0]]) if all(k in r for r in rows.values())]
  lines = ['| model | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for name, results in rows.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{results[k]:.3f}' for k in columns) + ' |')
  return '\n'.join(lines)


def chart(rows: dict, vocabs: dict, path: Path) -> Path | None:
  """Per-class zero-shot accuracy of each model, one panel per label field, as a PNG; None
  (nothing written) where no evaluator gives it."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from medclip_jax.evaluation import report  # pylint: disable=import-outside-toplevel

  panels = []
  for key in rows[MODELS[0]]:
    name, *rest = key.split('.')
    if len(rest) == 3 and rest[1] == 'accuracy' and (name, rest[0]) not in panels:
      panels.append((name, rest[0]))
  if not panels:
    return None
  classes_of = {
    panel: [
      c for c in vocabs.get(panel[1], []) if f'{panel[0]}.{panel[1]}.accuracy.{c}' in rows['start']
    ]
    for panel in panels
  }
  # Each panel as tall as its classes need (three bars each), so that many classes stay legible.
  heights = [max(2.0, 0.6 + 0.3 * len(classes_of[panel])) for panel in panels]
  figure = Figure(figsize=(7, 0.6 + sum(heights)), dpi=110)
  FigureCanvasAgg(figure)
  grid = figure.add_gridspec(len(panels), 1, height_ratios=heights)
  for i, (name, field) in enumerate(panels):
    axes = figure.add_subplot(grid[i])
    classes = classes_of[(name, field)]
    y = np.arange(len(classes))
    for j, (model, results) in enumerate(rows.items()):
      values = [results.get(f'{name}.{field}.accuracy.{c}', np.nan) for c in classes]
      axes.barh(y + (j - 1) * 0.27, values, height=0.27, label=model)
    axes.set_yticks(y, [report.plain(c) for c in classes])
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_title(f'zero-shot accuracy per class: {report.plain(field)}', fontsize=10)
  # One legend for all panels, above them, clear of the bars.
  handles, labels = figure.axes[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc='upper center', ncol=len(rows), fontsize=9, frameon=False)
  figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))
  figure.savefig(path)
  return path


def compare(config, init: str, workdir: str) -> dict:
  """Runs the comparison; returns {model: results} and writes its files into `workdir`."""
  # Imported here so that --help answers quickly.
  from medclip_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import checks  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import setup  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  workdir = Path(workdir)
  info = pipeline.dataset_info(config.data)
  if not config.compare.label_text and not info.get('labels'):
    raise UserError(
      f'compare fine-tunes one run on text made from labels, and the dataset in '
      f'{config.data.dir or config.data.tfds_name} has no label fields: give a labelled '
      'dataset (prepare with label columns), or set --config.compare.label_text to a template.'
    )
  loaded = load.load(init)
  # The starting model fixes the architecture and what it reads (tokenizer, image size and
  # normalisation, text length); its weights come from init_from.
  config.model = loaded.config.model
  config.model.image.init = config.model.text.init = ''
  for field in ('tokenizer', 'image_size', 'mean', 'std', 'max_text_length'):
    config.data[field] = loaded.config.data[field]
  config.init_from = str(Path(init).absolute())
  config.train.steps = config.compare.steps
  if config.train.warmup_steps > config.compare.steps:
    # A recipe's warmup is sized for its own run (medpix: 1,000 of 100,000 steps).
    warmup = config.compare.steps // 10
    print(
      f'compare: the fine-tunes warm up over {warmup} steps, a tenth of their '
      f'{config.compare.steps} (config.train.warmup_steps={config.train.warmup_steps} is '
      'longer than they are)'
    )
    config.train.warmup_steps = warmup
  label_text = config.compare.label_text or (
    ', '.join(f'{{{field}}}' for field in sorted(info.get('labels', {}))) + '.'
  )
  checked = config.copy_and_resolve_references()
  checked.data.train_text = label_text
  # A bad template or setting stops here, before the starting model is evaluated.
  pipeline.describe_train_text(checked.data, info)
  checks.check(checked)

  settings = {
    'init': config.init_from,
    'init_step': loaded.step,
    'steps': config.compare.steps,
    'label_text': label_text,
    'data': str(Path(config.data.dir).absolute()) if config.data.dir else config.data.tfds_name,
    'eval_split': config.eval.split,
    'evals': config.evals.to_dict(),
  }
  settings = json.loads(json.dumps(settings))  # as it reads back (tuples as lists)
  _check_earlier_runs(workdir, settings)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / SETTINGS).write_text(json.dumps(settings, indent=2) + '\n')

  evaluation = setup.evaluation(config, info.get('labels', {}))
  evaluation.check_data()
  rows = {'start': evaluation(evaluation.place(loaded.variables))[0]}
  for name, text in (('captions', 'caption'), ('labels', label_text)):
    _check_init_unchanged(init, loaded.step)
    run = config.copy_and_resolve_references()
    run.data.train_text = text
    print(f'== fine-tuning on {name} ({text}) for {run.train.steps} steps in {workdir / name}')
    rows[name] = trainer.train_and_evaluate(run, str(workdir / name))

  (workdir / 'compare.json').write_text(
    json.dumps({**settings, 'init': str(init), 'results': rows}, indent=2) + '\n'
  )
  (workdir / 'compare.md').write_text(table(rows) + '\n')
  if not chart(rows, info.get('labels', {}), workdir / 'compare.png'):
    print('compare.png: not drawn (no evaluator gives per-class zero-shot accuracy)')
  return rows


# What a comparison was started with; its fine-tunes resume only under the same settings.
SETTINGS = 'compare_settings.json'


def _check_earlier_runs(workdir: Path, settings: dict) -> None:
  """A comparison already in `workdir` must have `settings`: resuming (or reusing) fine-tunes of
  another starting step, length, label text, dataset or evaluators would put rows that were
  not made alike in one table."""
  started = [workdir / name for name in MODELS[1:] if (workdir / name / 'checkpoints').is_dir()]
  if not started:
    return
  try:
    saved = json.loads((workdir / SETTINGS).read_text())
  except FileNotFoundError:  # a comparison from before the settings were kept: its init only
    saved = {'init': _init_of(started[0], settings['init'])}
  except ValueError:
    saved = {}
  changed = [key for key in settings if key in saved and saved[key] != settings[key]]
  if changed or not saved:
    what = '; '.join(f'{key} {saved[key]!r}, now {settings[key]!r}' for key in changed)
    raise UserError(
      f'{workdir} holds a comparison made with other settings ({what or "unreadable " + SETTINGS}'
      '): its fine-tunes would not be comparable with a start row evaluated now. Give a fresh '
      f'--workdir, or remove {" and ".join(map(str, started))} to fine-tune again.'
    )


def _init_of(run_dir: Path, default: str) -> str:
  """The init_from of the fine-tune in `run_dir`."""
  from medclip_jax.training import checkpointing  # pylint: disable=import-outside-toplevel

  checkpointer = checkpointing.Checkpointer(str(run_dir), keep=1_000_000, create=False)
  try:
    steps = checkpointer.all_steps()
    return checkpointer.restore_config(max(steps))['init_from'] if steps else default
  finally:
    checkpointer.close()


def _check_init_unchanged(init: str, step: int) -> None:
  """Each fine-tune starts from the newest model in `init`: it must still be the `step` that
  the start row was evaluated at (a run that is still training moves on)."""
  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel

  newest = load.newest_step(init)
  if newest != step:
    raise UserError(
      f'{init} moved on from step {step} to step {newest} during the comparison (is it still '
      'training?). Compare a finished run, or an export of the step you want '
      '(python -m medclip_jax.export --step=...).'
    )


def _define_flags():
  # Defined only when run as the command, so that importing `compare` defines no flags.
  config_flags.DEFINE_config_file('config', None, 'The config: data, training, evaluators.')
  flags.DEFINE_string('init', None, 'The starting model: a training workdir or an export.')
  flags.DEFINE_string('workdir', None, 'Where the runs and the comparison go.')
  flags.mark_flags_as_required(['config', 'init', 'workdir'])


# Overrides compare would ignore: the starting model fixes these, and compare.steps the steps.
_FROM_THE_MODEL = (
  '--config.model.',
  '--config.init_from',
  '--config.train.steps',
  *(f'--config.data.{f}' for f in ('tokenizer', 'image_size', 'mean', 'std', 'max_text_length')),
)


def ignored_overrides(argv) -> list[str]:
  """The --config overrides on `argv` that compare would ignore."""
  return [a.split('=')[0] for a in argv if a.startswith(_FROM_THE_MODEL)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  ignored = ignored_overrides(sys.argv[1:])
  if ignored:
    raise UserError(
      f'compare takes the model and what it reads (tokenizer, image size, mean, std, text '
      f"length) from --init, and the fine-tunes' steps from config.compare.steps, so "
      f'{", ".join(ignored)} would be ignored. Give another starting model with --init, or '
      'the steps with --config.compare.steps.'
    )
  try:
    rows = compare(FLAGS.config, FLAGS.init, FLAGS.workdir)
  except preemption.Preempted as e:
    print(f'\n{e} (the runs already finished are kept)', flush=True)
    return
  workdir = Path(FLAGS.workdir)
  print(table(rows))
  print(f'written: {workdir / "compare.md"}, {workdir / "compare.json"}, {workdir / "compare.png"}')


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
