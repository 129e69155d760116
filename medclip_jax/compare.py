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
command resumes them.
"""

import json
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


def chart(rows: dict, vocabs: dict, path: Path) -> Path:
  """Per-class zero-shot accuracy of each model, one panel per label field, as a PNG."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  panels = []
  for key in rows[MODELS[0]]:
    name, *rest = key.split('.')
    if len(rest) == 3 and rest[1] == 'accuracy' and (name, rest[0]) not in panels:
      panels.append((name, rest[0]))
  figure = Figure(figsize=(7, 0.6 + 2.6 * max(1, len(panels))), dpi=110)
  FigureCanvasAgg(figure)
  for i, (name, field) in enumerate(panels):
    axes = figure.add_subplot(len(panels), 1, i + 1)
    classes = [c for c in vocabs.get(field, []) if f'{name}.{field}.accuracy.{c}' in rows['start']]
    y = np.arange(len(classes))
    for j, (model, results) in enumerate(rows.items()):
      values = [results.get(f'{name}.{field}.accuracy.{c}', np.nan) for c in classes]
      axes.barh(y + (j - 1) * 0.27, values, height=0.27, label=model)
    axes.set_yticks(y, classes)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_title(f'zero-shot accuracy per class: {field}', fontsize=10)
  if panels:  # one legend for all panels, above them, clear of the bars
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
  from medclip_jax.training import setup  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import trainer  # pylint: disable=import-outside-toplevel

  workdir = Path(workdir)
  info = pipeline.dataset_info(config.data)
  loaded = load.load(init)
  # The starting model fixes the architecture and the tokenizer; its weights come from init_from.
  config.model = loaded.config.model
  config.model.image.init = config.model.text.init = ''
  config.data.tokenizer = loaded.config.data.tokenizer
  config.init_from = str(Path(init).absolute())
  config.train.steps = config.compare.steps
  label_text = config.compare.label_text or (
    ', '.join(f'{{{field}}}' for field in sorted(info.get('labels', {}))) + '.'
  )
  checked = config.copy_and_resolve_references()
  checked.data.train_text = label_text
  pipeline.describe_train_text(checked.data, info)  # a bad template stops here, before training

  for name in ('captions', 'labels'):
    _check_earlier_run(workdir / name, config.init_from)

  evaluation = setup.evaluation(config, info.get('labels', {}))
  evaluation.check_data()
  rows = {'start': evaluation(evaluation.place(loaded.variables))[0]}
  for name, text in (('captions', 'caption'), ('labels', label_text)):
    run = config.copy_and_resolve_references()
    run.data.train_text = text
    print(f'== fine-tuning on {name} ({text}) for {run.train.steps} steps in {workdir / name}')
    rows[name] = trainer.train_and_evaluate(run, str(workdir / name))

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'compare.json').write_text(
    json.dumps({'init': str(init), 'label_text': label_text, 'results': rows}, indent=2) + '\n'
  )
  (workdir / 'compare.md').write_text(table(rows) + '\n')
  chart(rows, info.get('labels', {}), workdir / 'compare.png')
  return rows


def _check_earlier_run(run_dir: Path, init_from: str) -> None:
  """A fine-tune already in `run_dir` must start from `init_from`: resuming one of another
  model would put its results in this comparison's table."""
  from medclip_jax.training import checkpointing  # pylint: disable=import-outside-toplevel

  if not (run_dir / 'checkpoints').is_dir():
    return
  checkpointer = checkpointing.Checkpointer(str(run_dir), keep=1_000_000, create=False)
  try:
    steps = checkpointer.all_steps()
    saved = checkpointer.restore_config(max(steps))['init_from'] if steps else init_from
  finally:
    checkpointer.close()
  if saved != init_from:
    raise UserError(
      f'{run_dir} holds a fine-tune of {saved}, not of {init_from}: resuming it would put '
      "another model's results in this comparison. Give a fresh --workdir to compare this "
      f'model, or remove {run_dir}.'
    )


def _define_flags():
  # Defined only when run as the command, so that importing `compare` defines no flags.
  config_flags.DEFINE_config_file('config', None, 'The config: data, training, evaluators.')
  flags.DEFINE_string('init', None, 'The starting model: a training workdir or an export.')
  flags.DEFINE_string('workdir', None, 'Where the runs and the comparison go.')
  flags.mark_flags_as_required(['config', 'init', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
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
