"""Evaluators as data: config.evals entries name a type and options; keys carry the entry's name."""

import numpy as np
import pytest

from medclip_jax import evaluation
from medclip_jax.errors import UserError
from tests import helpers


def _split():
  eye = np.eye(4, dtype=np.float32)
  # Images 2 and 3 are nearer each other's caption than their own: ranks 1, 1, 2, 2.
  return helpers.encoded_split('test', eye, 0.8 * eye[[0, 1, 3, 2]] + 0.2 * eye)


def test_each_entry_reports_under_its_own_name():
  assert {'retrieval', 'zeroshot'} <= set(evaluation.available())
  evaluators = evaluation.build_evaluators(
    {'retrieval': {'type': 'retrieval', 'ks': (1,)}, 'wide': {'type': 'retrieval', 'ks': (2,)}}
  )
  results, details = evaluation.run_evaluators(evaluators, None, _split(), None)
  assert details == {'retrieval': {'type': 'retrieval'}, 'wide': {'type': 'retrieval'}}
  assert {k: v for k, v in results.items() if 'rank' not in k} == {
    'retrieval.gallery_size': 4.0,
    'retrieval.i2t.R@1': 0.5,
    'retrieval.t2i.R@1': 0.5,
    'wide.gallery_size': 4.0,
    'wide.i2t.R@2': 1.0,
    'wide.t2i.R@2': 1.0,
  }


@pytest.mark.parametrize(
  'entry, message',
  [
    ({'type': 'bleu'}, r"config.evals.bad.type is 'bleu'; the evaluator types are \[.*'retrieval'"),
    ({'ks': (1,)}, 'config.evals.bad.type is None'),
    ({'type': 'retrieval', 'k': 5}, r"config.evals.bad: .*'k'.*the options of 'retrieval' are ks,"),
  ],
)
def test_bad_entries_are_user_errors(entry, message):
  with pytest.raises(UserError, match=message):
    evaluation.build_evaluators({'bad': entry})


def test_an_entry_of_type_off_is_skipped():
  evaluators = evaluation.build_evaluators(
    {'retrieval': {'type': 'retrieval'}, 'caption': {'type': 'off', 'bank': 'train'}}
  )
  assert list(evaluators) == ['retrieval']
