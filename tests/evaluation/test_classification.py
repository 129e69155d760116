"""The classification scores match scikit-learn's; the bootstrap interval brackets the AUROC."""

import numpy as np
from sklearn import metrics as sk_metrics

from medclip_jax.evaluation import classification


def test_auroc_equals_scikit_learn_with_ties_and_in_batches():
  rng = np.random.default_rng(0)
  truth = rng.random(300) < 0.3
  scores = np.round(rng.normal(size=300) + truth, 1)  # rounded: many ties
  assert np.isclose(classification.auroc(truth, scores), sk_metrics.roc_auc_score(truth, scores))
  batch = classification.auroc(np.stack([truth, ~truth]), np.stack([scores, scores]))
  np.testing.assert_allclose(
    batch, [sk_metrics.roc_auc_score(truth, scores), sk_metrics.roc_auc_score(~truth, scores)]
  )
  assert np.isnan(classification.auroc(np.ones(5, bool), np.arange(5.0)))  # one class only


def test_bootstrap_interval_brackets_the_auroc_and_is_seeded():
  rng = np.random.default_rng(1)
  truth = rng.random(200) < 0.5
  scores = rng.normal(size=200) + truth
  low, high = classification.auroc_interval(truth, scores, 1000, seed=0)
  assert low < classification.auroc(truth, scores) < high
  assert (low, high) == classification.auroc_interval(truth, scores, 1000, seed=0)


def test_balanced_accuracy_f1_and_confusion_equal_scikit_learn():
  labels = np.array([0, 0, 0, 1, 1, 2, -1, 2])
  predicted = np.array([0, 1, 0, 1, 2, 2, 0, 2])
  scored = classification.classification_metrics(labels, predicted, ['a', 'b', 'c', 'd'])
  known = labels >= 0
  assert scored['balanced_accuracy'] == sk_metrics.balanced_accuracy_score(
    labels[known], predicted[known]
  )
  assert scored['macro_f1'] == sk_metrics.f1_score(labels[known], predicted[known], average='macro')
  assert scored['recall'] == [2 / 3, 1 / 2, 1.0, None]  # class 'd' never occurs
  assert scored['confusion'][0] == [2, 1, 0, 0] and scored['support'] == [3, 2, 2, 0]


def test_macro_auroc_averages_the_classes_that_occur():
  labels = np.array([0, 1, 1, 0])
  probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.7, 0.3, 0]])
  expected = np.mean([sk_metrics.roc_auc_score(labels == c, probabilities[:, c]) for c in (0, 1)])
  assert classification.macro_auroc(labels, probabilities) == expected


def test_balanced_accuracy_leaves_out_a_class_no_label_holds_without_a_warning(recwarn):
  labels = np.array([0, 0, 1, 1])
  predicted = np.array([0, 2, 1, 1])  # class 2 predicted, never labelled
  assert classification.balanced_accuracy(labels, predicted) == (0.5 + 1.0) / 2
  assert not [w for w in recwarn if 'y_true' in str(w.message)]
