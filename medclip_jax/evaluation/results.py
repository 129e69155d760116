"""Evaluation results on disk (`WORKDIR/eval/step_<N>.json`) and as a table at the end of a run."""

import json
from pathlib import Path

import jax


def write(workdir: str, step: int, results: dict) -> Path:
  """Writes the flat results of `step` (process 0 only); returns the path."""
  path = Path(workdir) / 'eval' / f'step_{step}.json'
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + '\n')
  return path


def format_table(step: int, results: dict) -> str:
  """A two-column table of the results, for the end of a run."""
  if not results:
    return f'Evaluation at step {step}: no evaluators (config.evals is empty)'
  width = max(len(k) for k in results)
  lines = [f'Evaluation at step {step}', '-' * (width + 12)]
  for key, value in results.items():
    text = f'{int(value)}' if key.endswith('gallery_size') else f'{value:.4f}'
    lines.append(f'{key:<{width}}  {text:>8}')
  return '\n'.join(lines)


def headline(results: dict) -> str:
  """The R@10 and top-1 figures, for one progress line."""
  return '  '.join(
    f'{k} {v:.3f}' for k, v in sorted(results.items()) if k.endswith(('R@10', 'top1'))
  )
