"""Zero-shot classification: each image takes the class whose prompt ensemble is nearest.

`config.evals.<name> = {'type': 'zeroshot', 'templates': {field: (template, ...)},
'default_templates': (template, ...), 'class_names': {field: {label: (phrase, ...)}},
'auroc': {field: (positive, negative)}, 'bootstrap': 1000, 'seed': 0}` gives, for every
templated field the dataset labels (`default_templates`, if given, serve every label field
`templates` does not name):
`<name>.<field>.top1` and `.top3` (top-k only where there are k classes),
`.balanced_accuracy` (mean per-class recall), `.macro_f1` and `.accuracy.<class>`
(each class's recall). Fields in `auroc` are also scored as CheXzero does: per
class, a softmax over a positive and a negative prompt (e.g. '{}' and 'no {}')
gives a probability, reported as `.auroc.<class>` with a bootstrap 95%
interval (`.auroc_low.<class>`, `.auroc_high.<class>`) and their mean `.auroc`.
Images whose label is unknown are left out.
"""

import itertools
import string

import numpy as np

from medclip_jax.evaluation.classification import auroc, auroc_interval, classification_metrics


def zeroshot_metrics(
  image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, ks=(1, 3)
) -> dict:
  """Top-k accuracy of classifying images by their nearest class embedding, as {'top<k>': acc}.

  Images whose label is unknown (-1) are left out.
  """
  known = labels >= 0
  scores = image_emb[known] @ class_emb.T
  order = np.argsort(-scores, axis=1)
  hits = order == labels[known][:, None]
  return {f'top{k}': float(hits[:, :k].any(axis=1).mean()) for k in ks if k <= class_emb.shape[0]}


def prompts(field: str, label: str, templates, vocabs: dict, class_names: dict) -> list[str]:
  """The prompt ensemble of one class.

  Each template is filled with each phrase of the class (at `{}` or
  `{<field>}`); a template naming other label fields, like
  '{} of the {body_part}.', is filled with every phrase of every class of
  those fields, so the class embedding averages over them. The phrases of a
  class are `class_names[field][label]` if given, else the label itself.
  """

  def phrases(f, name):
    return tuple(dict(class_names.get(f, {})).get(name, (name,)))

  out = []
  for template in templates:
    others = sorted(
      {name for _, name, _, _ in string.Formatter().parse(template) if name and name != field}
    )
    choices = [[p for other in vocabs[f] for p in phrases(f, other)] for f in others]
    for phrase in phrases(field, label):
      for combo in itertools.product(*choices):
        out.append(template.format(phrase, **{field: phrase}, **dict(zip(others, combo))))
  return out


class Evaluator:
  """Prompt-ensemble zero-shot classification of each templated label field of the split."""

  def __init__(
    self, templates=None, default_templates=(), class_names=None, auroc=None, bootstrap=1000, seed=0
  ):
    self.templates = {f: list(t) for f, t in dict(templates or {}).items()}
    self.default_templates = list(default_templates)
    self.class_names = dict(class_names or {})
    self.auroc_prompts = {f: tuple(pair) for f, pair in dict(auroc or {}).items()}
    for field, pair in self.auroc_prompts.items():
      if len(pair) != 2:
        raise ValueError(f'auroc[{field!r}] must be (positive template, negative template)')
    self.bootstrap = int(bootstrap)
    self.seed = int(seed)

  def class_embeddings(self, variables, embedder, field, vocabs, templates) -> np.ndarray:
    """One unit vector per class of `field`: the normalised mean of its prompt ensemble."""
    groups = [prompts(field, label, templates, vocabs, self.class_names) for label in vocabs[field]]
    emb = embedder.encode_strings(variables, [p for g in groups for p in g])
    bounds = np.cumsum([0] + [len(g) for g in groups])
    emb = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)

  def _auroc(self, variables, embedder, field, split) -> dict:
    """{class: {'auroc', 'low', 'high'}} from the positive/negative prompt pair of `field`."""
    positive, negative = (
      self.class_embeddings(variables, embedder, field, split.vocabs, [t])
      for t in self.auroc_prompts[field]
    )
    scale = float(np.exp(variables['params']['logit_scale']))
    labels = split.labels[field]
    known = labels >= 0
    image = split.image[known]
    # softmax over (positive, negative) = sigmoid of the scaled difference.
    probability = 1 / (1 + np.exp(-scale * (image @ positive.T - image @ negative.T)))
    out = {}
    for c, name in enumerate(split.vocabs[field]):
      truth = labels[known] == c
      if truth.all() or not truth.any():
        continue  # AUROC needs both outcomes
      low, high = auroc_interval(truth, probability[:, c], self.bootstrap, self.seed)
      out[name] = {'auroc': float(auroc(truth, probability[:, c])), 'low': low, 'high': high}
    return out

  def unmatched(self, label_vocabs: dict) -> list[str]:
    """Warnings for configured fields the dataset has no labels for (they are not scored)."""
    named = set(self.templates) | set(self.class_names) | set(self.auroc_prompts)
    missing = sorted(named - set(label_vocabs))
    if not missing:
      return []
    have = ', '.join(sorted(label_vocabs)) or 'none'
    return [
      f'zero-shot fields {missing} match no label of the dataset (its label fields: {have}); '
      'they are not scored'
    ]

  def __call__(self, variables, split, embedder) -> dict:
    results, fields = {}, {}
    default = {f: self.default_templates for f in split.vocabs} if self.default_templates else {}
    for field, templates in {**default, **self.templates}.items():
      if field not in split.vocabs:
        continue
      classes = split.vocabs[field]
      class_emb = self.class_embeddings(variables, embedder, field, split.vocabs, templates)
      labels = split.labels[field]
      for key, value in zeroshot_metrics(split.image, labels, class_emb).items():
        results[f'{field}.{key}'] = value
      scored = classification_metrics(labels, np.argmax(split.image @ class_emb.T, axis=1), classes)
      results[f'{field}.balanced_accuracy'] = scored['balanced_accuracy']
      results[f'{field}.macro_f1'] = scored['macro_f1']
      for name, recall in zip(classes, scored['recall']):
        if recall is not None:
          results[f'{field}.accuracy.{name}'] = recall
      fields[field] = {
        'classes': list(classes),
        'per_class_accuracy': scored['recall'],
        'support': scored['support'],
        'confusion': scored['confusion'],
      }
      if field in self.auroc_prompts:
        per_class = self._auroc(variables, embedder, field, split)
        fields[field]['auroc'] = per_class
        if per_class:
          results[f'{field}.auroc'] = float(np.mean([v['auroc'] for v in per_class.values()]))
        for name, value in per_class.items():
          results[f'{field}.auroc.{name}'] = value['auroc']
          results[f'{field}.auroc_low.{name}'] = value['low']
          results[f'{field}.auroc_high.{name}'] = value['high']
    return {**results, 'details': {'fields': fields}}
