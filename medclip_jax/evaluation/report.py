"""The human evaluation report (`WORKDIR/eval/step_<N>/report.html`).

One self-contained HTML file that opens offline: the flat metrics of `results.write` as a table
grouped by evaluator, then a section per evaluator whose details this module can draw (zero-shot
accuracy per class and confusion matrices, caption metrics and retrieved examples, linear-probe
tables). Charts and images are embedded as base64 data URIs; there is no JavaScript and nothing
is fetched. Charts use matplotlib's object-oriented API, which needs no pyplot or global backend.
"""

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

_DPI = 110

_CSS = """
body { font-family: system-ui, 'Segoe UI', Helvetica, Arial, sans-serif; color: #222;
  max-width: 1250px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #345; padding-bottom: 0.15em; margin-top: 1.8em; }
.meta { color: #555; margin-top: 0; }
.kind { color: #777; font-size: 0.7em; font-weight: normal; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.key { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; }
tr.group th { background: #dde5ef; }
.na { color: #999; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; max-width: 34em; }
.unavailable { background: #fff6e0; border: 1px solid #e3c36b; padding: 0.5em 0.8em; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
  gap: 1em; }
.example { border: 1px solid #ccc; border-radius: 4px; padding: 0.6em; font-size: 0.92em; }
.example img { width: 160px; height: auto; display: block; margin-bottom: 0.4em; }
.example h4 { margin: 0.5em 0 0.2em; font-size: 1em; }
.example ul, .example ol { margin: 0; padding-left: 1.5em; }
.id { color: #777; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
.score { font-variant-numeric: tabular-nums; color: #345; font-weight: bold; }
"""

_CAPTION_METRICS = {
  'bleu1': 'BLEU-1',
  'bleu2': 'BLEU-2',
  'bleu3': 'BLEU-3',
  'bleu4': 'BLEU-4',
  'meteor': 'METEOR',
  'rouge_l': 'ROUGE-L',
  'cider_d': 'CIDEr-D',
}
_CAPTION_COLUMNS = ('model', 'random', 'oracle')
_PROBE_METRICS = {
  'accuracy': 'accuracy',
  'balanced_accuracy': 'balanced accuracy',
  'auroc': 'AUROC',
  'train_examples': 'training examples',
}


def write(path, *, step: int, split: str, model: str, results: dict, details: dict) -> Path:
  """Writes the report of one evaluation to `path` (an .html file); returns the path.

  `results` are the flat metrics {'<name>.<key>': float}; `details` {name: {'type': ..., ...}}
  the evaluators' non-scalar outputs. Detail types this module does not draw are skipped.
  """
  sections = []
  for name, detail in details.items():
    render = _SECTIONS.get(detail.get('type'))
    body = render(detail) if render else ''
    if body:
      sections.append((name, detail['type'], body))

  nav = ''.join(
    f'<li><a href="#section-{i}">{_e(name)}</a></li>' for i, (name, _, _) in enumerate(sections)
  )
  parts = [
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
    f'<title>Evaluation at step {step}: {_e(model)}</title>\n<style>{_CSS}</style>\n</head>\n',
    f'<body>\n<h1>Evaluation at step {step}</h1>\n',
    f'<p class="meta">Model: <b>{_e(model)}</b> &middot; split: <b>{_e(split)}</b></p>\n',
    f'<ul><li><a href="#metrics">Metrics</a></li>{nav}</ul>\n' if sections else '',
    f'<h2 id="metrics">Metrics</h2>\n{_metrics_table(results)}\n',
  ]
  for i, (name, kind, body) in enumerate(sections):
    label = '' if kind == name else f' <span class="kind">{_e(kind)}</span>'
    parts.append(f'<h2 id="section-{i}">{_e(name)}{label}</h2>\n')
    parts.append(body)
  parts.append('</body>\n</html>\n')

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(parts), encoding='utf-8')
  return path


# Text and numbers.


def _e(text) -> str:
  return html.escape(str(text))


def _finite(value) -> float | None:
  """The value as a float, or None for None and NaN (absent, not zero)."""
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) else value


def _number_cell(value, digits: int = 4) -> str:
  value = _finite(value)
  if value is None:
    return '<td class="num na">n/a</td>'
  # Counts (gallery sizes, example counts) read better without decimals.
  text = f'{int(value)}' if value.is_integer() and abs(value) > 1 else f'{value:.{digits}f}'
  return f'<td class="num">{text}</td>'


def _metrics_table(results: dict) -> str:
  if not results:
    return '<p>No metrics (no evaluators were configured).</p>'
  groups = {}
  for key, value in results.items():
    groups.setdefault(key.split('.', 1)[0], []).append((key, value))
  rows = ['<table>\n<tr><th>metric</th><th>value</th></tr>']
  for group, items in groups.items():
    rows.append(f'<tr class="group"><th colspan="2">{_e(group)}</th></tr>')
    rows.extend(f'<tr><td class="key">{_e(k)}</td>{_number_cell(v)}</tr>' for k, v in items)
  rows.append('</table>')
  return '\n'.join(rows)


# Charts.


def plain(text) -> str:
  """Text for matplotlib, where a pair of '$' would otherwise start mathtext."""
  return str(text).replace('$', r'\$')


def _png_uri(data: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _chart(fig: Figure, caption: str, alt: str) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=_DPI, bbox_inches='tight')
  return (
    f'<figure><img src="{_png_uri(buffer.getvalue())}" alt="{_e(alt)}">'
    f'<figcaption>{caption}</figcaption></figure>'
  )


def _accuracy_chart(field: str, classes: list, accuracy: list, support: list) -> str:
  n = len(classes)
  fig = Figure(figsize=(5.5, 0.7 + 0.32 * n))
  ax = fig.add_subplot()
  y = np.arange(n)
  present = [a is not None for a in accuracy]
  ax.barh(y[present], [a for a in accuracy if a is not None], color='#4a78a8', height=0.7)
  for i, a in enumerate(accuracy):
    text, x, color = ('n/a', 0.02, '#777') if a is None else (f'{a:.2f}', a + 0.01, '#222')
    ax.text(x, i, text, va='center', fontsize=9, color=color)
  ax.set_yticks(y, [f'{plain(c)} (n={s})' for c, s in zip(classes, support)])
  ax.set_ylim(n - 0.5, -0.5)  # first class on top, as in the table; room for rows without bars
  ax.set_xlim(0, 1.1)
  ax.set_xticks(np.linspace(0, 1, 6))
  ax.set_xlabel('accuracy (share of the class predicted as itself)')
  ax.grid(axis='x', color='#ddd')
  ax.set_axisbelow(True)
  ax.spines[['top', 'right']].set_visible(False)
  return _chart(
    fig,
    f'Per-class top-1 accuracy for <b>{_e(field)}</b>; n is the number of images of the class. '
    'Classes without images show n/a.',
    f'per-class accuracy, {field}',
  )


def _confusion_chart(field: str, classes: list, confusion: np.ndarray) -> str:
  n = len(classes)
  side = min(max(3.0, 1.2 + 0.5 * n), 11.0)
  fig = Figure(figsize=(side + 1.0, side))
  ax = fig.add_subplot()
  # Shade by share of the true class so that rare classes are as visible as common ones.
  totals = confusion.sum(axis=1, keepdims=True)
  share = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
  image = ax.imshow(share, cmap='Blues', vmin=0, vmax=1)
  fontsize = 9 if n <= 10 else max(5, 9 - (n - 10) // 3)
  for (i, j), count in np.ndenumerate(confusion):
    color = 'white' if share[i, j] > 0.55 else '#222'
    ax.text(j, i, str(count), ha='center', va='center', fontsize=fontsize, color=color)
  labels = [plain(c) for c in classes]
  ax.set_xticks(range(n), labels, rotation=45, ha='right', rotation_mode='anchor')
  ax.set_yticks(range(n), labels)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='share of the true class')
  return _chart(
    fig,
    f'Confusion matrix for <b>{_e(field)}</b>: rows are the true class, columns the predicted '
    'one; cells count images and are shaded by their share of the row.',
    f'confusion matrix, {field}',
  )


# Sections, one per detail type.


def _zeroshot(detail: dict) -> str:
  parts = []
  for field, info in detail.get('fields', {}).items():
    classes = [str(c) for c in info['classes']]
    accuracy = [_finite(a) for a in info['per_class_accuracy']]
    support = [int(s) for s in info['support']]
    # The table goes under the bar chart, which is shorter than the confusion matrix beside it.
    parts.append(f'<h3>{_e(field)}</h3>\n<div class="charts"><div>')
    parts.append(_accuracy_chart(field, classes, accuracy, support))
    parts.append(_per_class_table(classes, accuracy, support, info.get('auroc') or {}))
    parts.append('</div>')
    parts.append(_confusion_chart(field, classes, np.asarray(info['confusion'], dtype=int)))
    parts.append('</div>\n')
  return ''.join(parts)


def _per_class_table(classes: list, accuracy: list, support: list, auroc: dict) -> str:
  """The chart's numbers as text, with the one-vs-rest AUROC where the evaluator computed it."""
  head = '<tr><th>class</th><th>images</th><th>accuracy</th>'
  head += '<th>AUROC</th><th>95% interval</th></tr>' if auroc else '</tr>'
  rows = ['<table>', head]
  for name, a, n in zip(classes, accuracy, support):
    cells = f'<td>{_e(name)}</td><td class="num">{n}</td>{_number_cell(a, 3)}'
    if auroc:
      entry = auroc.get(name, {})
      low, high = _finite(entry.get('low')), _finite(entry.get('high'))
      interval = (
        '<td class="num na">n/a</td>'
        if low is None or high is None
        else f'<td class="num">{low:.3f} &ndash; {high:.3f}</td>'
      )
      cells += _number_cell(entry.get('auroc'), 3) + interval
    rows.append(f'<tr>{cells}</tr>')
  rows.append('</table>\n')
  return '\n'.join(rows)


def _caption(detail: dict) -> str:
  parts = []
  if detail.get('bank'):
    parts.append(f'<p>Captions are retrieved from a bank: {_e(detail["bank"])}.</p>\n')
  if 'scores' in detail:
    scores = detail['scores']
    columns = [c for c in _CAPTION_COLUMNS if c in scores]
    rows = ['<table>\n<tr><th>metric</th>' + ''.join(f'<th>{c}</th>' for c in columns) + '</tr>']
    for key, label in _CAPTION_METRICS.items():
      cells = ''.join(_number_cell(scores[c].get(key)) for c in columns)
      rows.append(f'<tr><td>{label}</td>{cells}</tr>')
    rows.append('</table>')
    parts.append('\n'.join(rows) + '\n')
    parts.append(
      '<p><i>model</i> is the top retrieved caption for each image; <i>random</i> a random '
      'caption from the bank; <i>oracle</i> the bank caption with the best CIDEr-D against the '
      'reference, an upper bound for any retrieval from this bank.</p>\n'
    )
  else:
    reason = detail.get('unavailable', 'no scores were computed')
    parts.append(f'<p class="unavailable">Caption metrics unavailable: {_e(reason)}</p>\n')
  examples = detail.get('examples') or []
  if examples:
    parts.append('<h3>Examples</h3>\n<div class="examples">\n')
    parts.extend(_example(x) for x in examples)
    parts.append('</div>\n')
  return ''.join(parts)


def _example(example: dict) -> str:
  image = bytes(example['image'])
  mime = 'image/jpeg' if image.startswith(b'\xff\xd8') else 'image/png'
  src = f'data:{mime};base64,' + base64.b64encode(image).decode('ascii')
  references = ''.join(f'<li>{_e(r)}</li>' for r in example.get('references', []))
  retrieved = ''.join(
    f'<li><span class="score">{float(r["score"]):.3f}</span> {_e(r["caption"])}'
    # A bank without ids (e.g. captions from a file) gives None.
    + ('' if r.get('id') is None else f' <span class="id">{_e(r["id"])}</span>')
    + '</li>'
    for r in example.get('retrieved', [])
  )
  return (
    f'<div class="example"><img src="{src}" alt="image {_e(example["id"])}">'
    f'<div class="id">{_e(example["id"])}</div>'
    f'<h4>Reference</h4><ul>{references}</ul>'
    f'<h4>Retrieved (similarity)</h4><ol>{retrieved}</ol></div>\n'
  )


def _fraction(label: str) -> float | None:
  """1.0 for '1%', or None for a label that is not a percentage."""
  try:
    return float(str(label).rstrip('%'))
  except ValueError:
    return None


def _label_fractions(detail: dict, what: str) -> str:
  """Tables and a chart of scores against the share of training labels (probe, fine-tuning)."""
  table = detail.get('table', {})
  parts = []
  fig = Figure(figsize=(5.0, 3.2))
  ax = fig.add_subplot()
  ticks = {}
  for field, by_fraction in table.items():
    rows = ['<table>\n<tr><th>labels used</th>']
    rows[0] += ''.join(f'<th>{label}</th>' for label in _PROBE_METRICS.values()) + '</tr>'
    points = []
    for label, metrics in by_fraction.items():
      cells = ''.join(_number_cell(metrics.get(k), 3) for k in _PROBE_METRICS)
      rows.append(f'<tr><td>{_e(label)}</td>{cells}</tr>')
      x, y = _fraction(label), _finite(metrics.get('balanced_accuracy'))
      if x is not None and x > 0 and y is not None:
        points.append((x, y))
        ticks[x] = str(label)
    rows.append('</table>')
    parts.append(f'<h3>{_e(field)}</h3>\n' + '\n'.join(rows) + '\n')
    if points:
      ax.plot(*zip(*sorted(points)), marker='o', label=plain(field))
  if not ticks:
    return ''.join(parts)
  ax.set_xscale('log')
  ax.set_xticks(list(ticks), list(ticks.values()))
  ax.minorticks_off()
  ax.margins(x=0.08)  # keep the end points' markers clear of the frame
  ax.set_ylim(0, 1)
  ax.set_xlabel('share of the training labels')
  ax.set_ylabel('balanced accuracy')
  ax.grid(color='#ddd')
  ax.legend(frameon=False, loc='lower right')
  ax.spines[['top', 'right']].set_visible(False)
  chart = _chart(
    fig,
    f'Balanced accuracy of {what}, against the share of training labels it was trained on.',
    f'{what} balanced accuracy',
  )
  return f'<div class="charts">{chart}</div>\n' + ''.join(parts)


# Detail types without an entry (e.g. 'retrieval', which has no details) get no section.
_SECTIONS = {
  'zeroshot': _zeroshot,
  'caption': _caption,
  'linear_probe': lambda d: _label_fractions(d, 'a linear classifier on frozen image embeddings'),
  'finetune': lambda d: _label_fractions(d, 'the fine-tuned image tower with a linear head'),
}
