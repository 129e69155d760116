"""Linear probe: logistic regression on frozen image embeddings, with 1%, 10% and 100% of the labels.

`config.evals.<name> = {'type': 'linear_probe', 'fields': (), 'fractions': (0.01, 0.1, 1.0),
'Cs': (0.01, 0.1, 1.0, 10.0, 100.0), 'train_split': 'train', 'val_split': 'val', 'seed': 0}`
fits scikit-learn's LogisticRegression on the L2-normalised image embeddings of
a seeded sample of the training split's labelled records (at least one of each
class), picks the regularisation C with the best balanced accuracy on the
validation split (or C=1 when it has no labelled records, or is itself the
evaluated split, as in the periodic evaluations), and reports on the evaluated split
`<name>.<field>.<fraction>.{accuracy,balanced_accuracy,auroc}`
(AUROC: one-vs-rest, averaged over classes) and `.train_examples`. `fields`
defaults to every label field of the dataset; a field the training split labels with fewer
than two classes, or that no record of the evaluated split is labelled with, is not scored
(a logged warning).
"""

import warnings

import numpy as np
from absl import logging
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model

from medclip_jax.errors import UserError
from medclip_jax.evaluation.classification import balanced_accuracy
from medclip_jax.evaluation.classification import macro_auroc


def sample_labelled(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices of `fraction` of the labelled rows (seeded), topped up to one row of each class."""
  labelled = np.flatnonzero(labels >= 0)
  rng = np.random.default_rng(seed)
  count = max(1, int(round(fraction * len(labelled))))
  chosen = set(rng.choice(labelled, min(count, len(labelled)), replace=False).tolist())
  for c in np.unique(labels[labelled]):
    if not any(labels[i] == c for i in chosen):
      chosen.add(int(rng.choice(np.flatnonzero(labels == c))))
  return np.asarray(sorted(chosen))


def _fit(features, labels, C: float, seed: int):
  with warnings.catch_warnings():
    # Small samples may not converge in max_iter; the fit is still the best found.
    warnings.simplefilter('ignore', sk_exceptions.ConvergenceWarning)
    return linear_model.LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(
      features, labels
    )


def _probabilities(model, features, n_classes: int) -> np.ndarray:
  """[N, n_classes] class probabilities, zero for classes the sample never had."""
  out = np.zeros((len(features), n_classes))
  out[:, model.classes_] = model.predict_proba(features)
  return out


def probe(train, train_labels, val, val_labels, test, test_labels, n_classes, Cs, seed) -> dict:
  """The probe's scores on the known labels of `test`, C chosen on `val`."""
  best_c = 1.0
  if val_labels is not None and np.any(val_labels >= 0) and len(Cs) > 1:
    known = val_labels >= 0

    def val_score(C):
      predicted = _fit(train, train_labels, C, seed).predict(val[known])
      return balanced_accuracy(val_labels[known], predicted)

    best_c = max(Cs, key=val_score)
  elif len(Cs) == 1:
    best_c = Cs[0]
  model = _fit(train, train_labels, best_c, seed)
  known = test_labels >= 0
  probabilities = _probabilities(model, test[known], n_classes)
  predicted = np.argmax(probabilities, axis=1)
  y = test_labels[known]
  return {
    'accuracy': float(np.mean(predicted == y)),
    'balanced_accuracy': balanced_accuracy(y, predicted),
    'auroc': macro_auroc(y, probabilities),
    'C': float(best_c),
  }


def fraction_label(fraction: float) -> str:
  return f'{100 * fraction:g}%'


def unscorable(field: str, train, split) -> str | None:
  """Why a classifier of `field` cannot be trained on `train` and scored on `split`, or None."""
  for labelled in (train, split):
    if not np.any(labelled.labels[field] >= 0):
      return f'no record of the {labelled.name!r} split is labelled with it'
  classes = np.unique(train.labels[field][train.labels[field] >= 0])
  if len(classes) < 2:
    only = split.vocabs[field][classes[0]]
    return (
      f'every labelled record of the {train.name!r} split is {only!r}, and a classifier needs '
      'two classes'
    )
  return None


def training_split(embedder, name: str, evaluator: str) -> None:
  """A UserError, before anything is embedded for it, if split `name` has no records."""
  if not embedder.split_size(name):
    raise UserError(
      f'The {evaluator} trains on the {name!r} split, which this dataset does not have (or '
      f"which has no records); set the evaluator's train_split to a split that has some, or "
      f'leave the {evaluator} out (--only, or its type off).'
    )


def unmatched_fields(fields, label_vocabs: dict) -> list[str]:
  """A warning for configured label `fields` the dataset does not have (not scored)."""
  missing = sorted(set(fields) - set(label_vocabs))
  if not missing:
    return []
  have = ', '.join(sorted(label_vocabs)) or 'none'
  return [f'fields {missing} match no label of the dataset (its label fields: {have}); not scored']


class Evaluator:
  """Linear probes of the frozen image tower, per label field and share of training labels."""

  def __init__(
    self,
    fields=(),
    fractions=(0.01, 0.1, 1.0),
    Cs=(0.01, 0.1, 1.0, 10.0, 100.0),
    train_split='train',
    val_split='val',
    seed=0,
  ):
    self.fields = tuple(fields)
    self.fractions = tuple(float(f) for f in fractions)
    if not all(0 < f <= 1 for f in self.fractions):
      raise ValueError(f'fractions must lie in (0, 1], got {self.fractions}')
    self.Cs = tuple(float(c) for c in Cs)
    self.train_split, self.val_split, self.seed = train_split, val_split, int(seed)

  def unmatched(self, label_vocabs: dict) -> list[str]:
    return unmatched_fields(self.fields, label_vocabs)

  def check(self, embedder) -> None:
    training_split(embedder, self.train_split, 'linear probe')

  def __call__(self, variables, split, embedder) -> dict:
    fields = [f for f in (self.fields or split.vocabs) if f in split.vocabs]
    train = embedder.encode_split(variables, self.train_split, split.vocabs, texts=False)
    val = None
    # C is not chosen on the split it is scored on (the periodic evaluations score the
    # validation split): that would read the figures high. There C is 1, as without labels.
    if split.name != self.val_split and embedder.split_size(self.val_split):
      val = embedder.encode_split(variables, self.val_split, split.vocabs, texts=False)
    results, table = {}, {}
    for field in fields:
      n_classes = len(split.vocabs[field])
      reason = unscorable(field, train, split)
      if reason:
        logging.warning('linear probe: %r is not scored: %s', field, reason)
        continue
      table[field] = {}
      for fraction in self.fractions:
        rows = sample_labelled(train.labels[field], fraction, self.seed)
        scores = probe(
          train.image[rows],
          train.labels[field][rows],
          None if val is None else val.image,
          None if val is None else val.labels[field],
          split.image,
          split.labels[field],
          n_classes,
          self.Cs,
          self.seed,
        )
        label = fraction_label(fraction)
        table[field][label] = {**scores, 'train_examples': len(rows)}
        for key in ('accuracy', 'balanced_accuracy', 'auroc'):
          if np.isfinite(scores[key]):
            results[f'{field}.{label}.{key}'] = scores[key]
        results[f'{field}.{label}.train_examples'] = float(len(rows))
    return {**results, 'details': {'table': table}}
