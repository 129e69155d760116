"""Evaluation results on disk and as a table at the end of a run.

`WORKDIR/eval/step_<N>.json` holds the flat results; `WORKDIR/eval/step_<N>/`
the files evaluators return under details['files'] (e.g. captions.jsonl) and
report.html. Results under a `name` (`evaluate` of another split or dataset
than the run's own) go to `step_<N>.<name>.json` and `step_<N>.<name>/`.
"""

import json
import os
from pathlib import Path

import jax


def step_dir(workdir: str, step: int, name: str = '') -> Path:
  """Where the files of the evaluation at `step` (under `name`) go."""
  return Path(workdir) / 'eval' / (f'step_{step}.{name}' if name else f'step_{step}')


def path(workdir: str, step: int, name: str = '') -> Path:
  """The file of the flat results of the evaluation at `step` (under `name`)."""
  folder = step_dir(workdir, step, name)
  return folder.with_name(f'{folder.name}.json')


# Keys of a results file beside the flat '<evaluator>.<key>' results (which all hold a dot).
_ABOUT = ('split', 'step', 'data')


def write(
  workdir: str,
  step: int,
  split: str,
  results: dict,
  details: dict | None = None,
  name: str = '',
  data: str = '',
) -> Path:
  """Writes the flat results of `step` on `split` (recorded in the file as 'split' and
  'step'; another dataset than the run's as 'data') and the evaluators' files (process 0
  only), under `name`; returns the results' path."""
  target = path(workdir, step, name)
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    about = {'split': split, 'step': step, **({'data': data} if data else {})}
    text = json.dumps({**results, **about}, indent=2, sort_keys=True)
    # Written beside and moved in: a run stopped while writing leaves no file cut short.
    partial = target.with_name(target.name + '.partial')
    partial.write_text(text + '\n')
    os.replace(partial, target)
    for file_name, files in _files(details or {}).items():
      file = step_dir(workdir, step, name) / file_name
      file.parent.mkdir(parents=True, exist_ok=True)
      file.write_text(''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in files))
  return target


def _load(file: Path) -> dict | None:
  """The results in `file`; None if there is none, or one cut short by an older version (its
  step is evaluated again)."""
  try:
    return json.loads(file.read_text())
  except (FileNotFoundError, ValueError):
    return None


def _saved(workdir: str, step: int, split: str, name: str = '') -> dict | None:
  saved = _load(path(workdir, step, name))
  if saved is None or saved.get('split', split) != split:
    return None  # files written before 'split' was recorded count as the split asked for
  return saved


def recorded(workdir: str, step: int, name: str = '', about: str = 'split') -> str | None:
  """What the results written for `step` (under `name`) record as `about` ('split' or 'data');
  None if there are none (or they predate recording it)."""
  return (_load(path(workdir, step, name)) or {}).get(about)


def exists(workdir: str, step: int, split: str) -> bool:
  """Whether results were written for `step` on `split`."""
  return _saved(workdir, step, split) is not None


def read(workdir: str, step: int, split: str, name: str = '') -> dict:
  """The flat results written for `step` on `split` (under `name`), or {} if there are none."""
  saved = _saved(workdir, step, split, name) or {}
  return {k: v for k, v in saved.items() if k not in _ABOUT}


def _files(details: dict) -> dict:
  """{file name: rows} of every evaluator; a name two evaluators use gets its evaluator's prefix."""
  named = [
    (name, file, rows) for name, d in details.items() for file, rows in d.get('files', {}).items()
  ]
  counts = {}
  for _, file, _ in named:
    counts[file] = counts.get(file, 0) + 1
  return {(file if counts[file] == 1 else f'{name}_{file}'): rows for name, file, rows in named}


def format_table(step: int, results: dict) -> str:
  """A two-column table of the results, for the end of a run."""
  if not results:
    return f'Evaluation at step {step}: no evaluators (config.evals has none switched on)'
  width = max(len(k) for k in results)
  lines = [f'Evaluation at step {step}', '-' * (width + 12)]
  for key, value in results.items():
    counts = key.endswith(('gallery_size', '_examples'))
    text = f'{int(value)}' if counts else f'{value:.4f}'
    lines.append(f'{key:<{width}}  {text:>8}')
  return '\n'.join(lines)


def headline(results: dict) -> str:
  """The R@10 and top-1 figures, for one progress line."""
  return '  '.join(
    f'{k} {v:.3f}' for k, v in sorted(results.items()) if k.endswith(('R@10', 'top1'))
  )
