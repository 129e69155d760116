"""Caption by retrieval: no leak of the image's own record or case, random and oracle references,
and the per-image file."""

import numpy as np
import pytest

from medclip_jax.data import caption_bank
from medclip_jax.errors import UserError
from medclip_jax.evaluation import caption
from tests import helpers


def _planted():
  """Two test images; the bank holds each one's own caption, a caption of its case, and others.

  Image 0 is closest to its own record's caption, then to its case's, then to a
  caption of another case: only that last one may be retrieved.
  """
  test = helpers.encoded_split(
    'test',
    image=np.eye(4)[:2],
    text=np.eye(4)[:2],
    id=['case1-img', 'case2-img'],
    group=['case1', 'case2'],
    caption=['CT of the brain with a mass.', 'MRI of the knee with an effusion.'],
  )
  bank_image = np.zeros((6, 4))
  bank_text = np.array(
    [
      [1.0, 0, 0, 0],  # image 0's own record
      [0.9, 0.1, 0, 0],  # image 0's case
      [0.7, 0, 0.7, 0],  # another case: the closest allowed
      [0, 1.0, 0, 0],  # image 1's own record
      [0.1, 0.9, 0, 0],  # image 1's case
      [0, 0.6, 0, 0.8],  # another case
    ]
  )
  bank = helpers.encoded_split(
    'train',
    image=bank_image,
    text=bank_text / np.linalg.norm(bank_text, axis=1, keepdims=True),
    id=['case1-img', 'case1-other', 'case3-img', 'case2-img', 'case2-other', 'case4-img'],
    group=['case1', 'case1', 'case3', 'case2', 'case2', 'case4'],
    caption=[
      'CT of the brain with a mass.',
      'CT of the brain, same case.',
      'CT of the brain with a tumour.',
      'MRI of the knee with an effusion.',
      'MRI of the knee, same case.',
      'MRI of the knee with fluid.',
    ],
  )
  return test, helpers.FakeEmbedder({'test': test, 'train': bank})


def test_the_own_record_and_the_own_case_are_never_retrieved():
  test, embedder = _planted()
  out = caption.Evaluator(bank='train', top_k=3, examples=2)(None, test, embedder)
  rows = out['details']['files']['captions.jsonl']
  retrieved = [[r['id'] for r in row['retrieved']] for row in rows]
  assert retrieved[0][0] == 'case3-img' and retrieved[1][0] == 'case4-img'
  for row, own_case in zip(retrieved, ('case1', 'case2')):
    assert not any(i.startswith(own_case) for i in row)
  # The oracle and random picks respect the same rule: the oracle here is the allowed
  # caption nearest the reference, so it scores no more than an exact match would.
  scores = out['details']['scores']
  assert set(scores) == {'model', 'random', 'oracle'}
  assert out['cider_d'] == scores['model']['cider_d'] < 10.0
  assert scores['oracle']['cider_d'] >= scores['model']['cider_d']
  assert {f'oracle.{m}' for m in ('bleu1', 'meteor', 'rouge_l', 'cider_d')} <= set(out)
  assert [e['id'] for e in out['details']['examples']] == ['case1-img', 'case2-img']
  assert rows[0]['references'] == ['CT of the brain with a mass.']


def test_a_file_bank_is_read_and_its_captions_all_allowed(tmp_path):
  test, embedder = _planted()
  path = tmp_path / 'bank.csv'
  path.write_text(
    'caption,source\nCT of the brain with a mass.,x\nMRI of the knee with an effusion.,y\n'
  )
  assert caption_bank.read_bank_file(path)[1] == 'MRI of the knee with an effusion.'
  embedder.text_fn = lambda t: [1.0, 0, 0, 0] if 'brain' in t else [0, 1.0, 0, 0]
  out = caption.Evaluator(bank=str(path), top_k=1)(None, test, embedder)
  assert out['cider_d'] == pytest.approx(10.0)  # a file bank excludes nothing: exact matches
  assert 'train split' not in out['details']['bank']


def test_bad_banks_are_user_errors(tmp_path):
  test, embedder = _planted()
  with pytest.raises(UserError, match='No caption bank file at'):
    caption.Evaluator(bank=str(tmp_path / 'none.txt'))(None, test, embedder)
  (tmp_path / 'empty.txt').write_text('\n  \n')
  with pytest.raises(UserError, match='holds no captions'):
    caption.Evaluator(bank=str(tmp_path / 'empty.txt'))(None, test, embedder)
  with pytest.raises(UserError, match="'val' split, which has no records"):
    caption.Evaluator(bank='val').check(embedder)  # run before anything is embedded


def test_without_java_the_scores_are_unavailable_with_the_reason(monkeypatch):
  test, embedder = _planted()
  monkeypatch.setenv('PATH', '/nonexistent')
  caption.caption_metrics.java_unavailable.cache_clear()
  try:
    out = caption.Evaluator(bank='train')(None, test, embedder)
  finally:
    caption.caption_metrics.java_unavailable.cache_clear()
  assert 'java' in out['details']['unavailable'].lower()
  assert 'cider_d' not in out and out['details']['files']['captions.jsonl']


def test_top_k_below_one_is_refused_when_the_evaluator_is_built():
  with pytest.raises(ValueError, match='top_k must be 1 or more'):
    caption.Evaluator(top_k=0)
