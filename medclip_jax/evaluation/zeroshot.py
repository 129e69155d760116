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
interval (`.auroc_low.<class>`, `.auroc_high.<class>`; none with 'bootstrap': 0) and
their mean `.auroc`. Images whose label is unknown are left out; a field no image of the split
is labelled with is not scored (a logged warning). A template naming a label field the
dataset lacks is not used, and a field left without templates is not scored (`unmatched`
says which).
"""

import itertools
import string

import numpy as np
from absl import logging

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


def template_fields(template: str) -> set[str]:
  """The label fields `template` names, as in '{} of the {body_part}.'."""
  return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fillable(template: str, vocabs) -> bool:
  """Whether the label fields `vocabs` hold every field `template` names."""
  return template_fields(template) <= set(vocabs)


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
    others = sorted(template_fields(template) - {field})
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
    if self.bootstrap < 0:
      raise ValueError(f'bootstrap must be 0 (no interval) or more resamples, got {bootstrap}')
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

  def _configured(self, vocabs: dict) -> dict:
    """{field: templates} of the label fields in `vocabs` that have templates configured."""
    default = dict.fromkeys(vocabs, self.default_templates) if self.default_templates else {}
    return {f: ts for f, ts in {**default, **self.templates}.items() if f in vocabs}

  def _scored(self, vocabs: dict) -> tuple[dict, dict]:
    """({field: templates}, {field: AUROC prompt pair}) scored on a dataset labelling `vocabs`:
    without the templates (and pairs) naming other fields, and the fields left with none."""
    configured = self._configured(vocabs)
    templates = {f: [t for t in ts if fillable(t, vocabs)] for f, ts in configured.items()}
    templates = {f: ts for f, ts in templates.items() if ts}
    pairs = {
      f: pair
      for f, pair in self.auroc_prompts.items()
      if f in templates and all(fillable(t, vocabs) for t in pair)
    }
    return templates, pairs

  def unmatched(self, label_vocabs: dict) -> list[str]:
    """Warnings for what a dataset labelling `label_vocabs` leaves unscored: configured fields
    it lacks, templates naming such fields, and the fields those leave without templates."""
    have = ', '.join(sorted(label_vocabs)) or 'none'
    out = []
    named = set(self.templates) | set(self.class_names) | set(self.auroc_prompts)
    missing = sorted(named - set(label_vocabs))
    if missing:
      out.append(
        f'zero-shot fields {missing} match no label of the dataset (its label fields: {have}); '
        'they are not scored'
      )
    configured = self._configured(label_vocabs)
    pairs = [p for f, p in self.auroc_prompts.items() if f in configured]
    templates = {t for ts in [*configured.values(), *pairs] for t in ts}
    unfillable = sorted(t for t in templates if not fillable(t, label_vocabs))
    if unfillable:
      out.append(
        f'zero-shot templates {unfillable} name label fields the dataset lacks (its label '
        f'fields: {have}); they are not used, nor AUROC prompt pairs holding them'
      )
    unscored = sorted(set(configured) - set(self._scored(label_vocabs)[0]))
    if unscored:
      out.append(f'zero-shot fields {unscored} are left without templates; they are not scored')
    return out

  def __call__(self, variables, split, embedder) -> dict:
    results, fields = {}, {}
    templates_of, pairs = self._scored(split.vocabs)
    for field, templates in templates_of.items():
      labels = split.labels[field]
      if not np.any(labels >= 0):
        logging.warning(
          'zero-shot: no record of the %r split is labelled with %r; it is not scored',
          split.name,
          field,
        )
        continue
      classes = split.vocabs[field]
      class_emb = self.class_embeddings(variables, embedder, field, split.vocabs, templates)
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
      if field in pairs:
        per_class = self._auroc(variables, embedder, field, split)
        fields[field]['auroc'] = per_class
        if per_class:
          results[f'{field}.auroc'] = float(np.mean([v['auroc'] for v in per_class.values()]))
        for name, value in per_class.items():
          results[f'{field}.auroc.{name}'] = value['auroc']
          if np.isfinite(value['low']):
            results[f'{field}.auroc_low.{name}'] = value['low']
            results[f'{field}.auroc_high.{name}'] = value['high']
    return {**results, 'details': {'fields': fields}}
