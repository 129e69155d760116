"""Classification scores shared by the zero-shot and linear-probe evaluators."""

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics


def auroc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Area under the ROC curve of `scores` [..., N] for the boolean `positive` [..., N].

  The Mann-Whitney statistic with ties at half weight, which is what
  scikit-learn's roc_auc_score computes; batched over leading axes (bootstrap
  resamples), NaN where a row has only one class.
  """
  ranks = stats.rankdata(scores, axis=-1)
  n_pos = positive.sum(axis=-1)
  n_neg = positive.shape[-1] - n_pos
  with np.errstate(invalid='ignore', divide='ignore'):
    return (np.sum(ranks * positive, axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_interval(positive, scores, resamples: int, seed: int) -> tuple[float, float]:
  """The 2.5 and 97.5 percentiles of AUROC over bootstrap resamples of the images; NaN where
  no resample scores (`resamples` 0, or every resample holds one class only)."""
  rows = np.random.default_rng(seed).integers(0, len(scores), (resamples, len(scores)))
  values = auroc(positive[rows], scores[rows])
  values = values[np.isfinite(values)]  # resamples holding one class only
  if not len(values):
    return float('nan'), float('nan')
  return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
  """The mean recall over the classes `labels` holds. A class predicted but absent from
  `labels` has no recall and is left out, which scikit-learn says in a warning at every
  evaluation; the definition expects it, so it is not printed."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'y_pred contains classes not in y_true')
    return float(sk_metrics.balanced_accuracy_score(labels, predicted))


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, classes) -> dict:
  """Balanced accuracy, macro F1, per-class recall and the confusion matrix of known labels."""
  known = labels >= 0
  y, p = labels[known], predicted[known]
  confusion = sk_metrics.confusion_matrix(y, p, labels=np.arange(len(classes)))
  support = confusion.sum(axis=1)
  recall = [
    float(confusion[c, c] / support[c]) if support[c] else None for c in range(len(classes))
  ]
  return {
    'balanced_accuracy': balanced_accuracy(y, p),
    'macro_f1': float(sk_metrics.f1_score(y, p, average='macro', zero_division=0)),
    'recall': recall,
    'support': support.tolist(),
    'confusion': confusion.tolist(),
  }


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
  """Mean one-vs-rest AUROC over the classes that occur (and do not make up every label)."""
  values = [
    float(auroc(labels == c, probabilities[:, c]))
    for c in range(probabilities.shape[1])
    if 0 < np.sum(labels == c) < len(labels)
  ]
  return float(np.mean(values)) if values else float('nan')
