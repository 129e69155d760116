"""COCO caption metrics: worked by hand, equal to pycocoevalcap's own scorers, and the oracle.

Each METEOR run starts a JVM (~5 s), so the 60-study set is scored once per
module (with pycocoevalcap's own METEOR loading alongside), and the
hand-worked test leaves METEOR out.
"""

import math

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from medclip_jax.data import synthetic
from medclip_jax.errors import UserError
from medclip_jax.evaluation import caption_metrics

needs_java = pytest.mark.skipif(
  caption_metrics.java_unavailable() is not None, reason=str(caption_metrics.java_unavailable())
)


def _labels_and_place(seed: int):
  rng = np.random.default_rng(seed)
  labels = synthetic.sample_labels(rng)
  _, place = synthetic.tissue_map(labels, rng, 32)
  return labels, place


def _paraphrases(seed: int, count: int) -> list[str]:
  """`count` captions of one synthetic study: its templates and synonyms vary with the seed."""
  labels, place = _labels_and_place(seed)
  return [synthetic.caption(np.random.default_rng([seed, j]), labels, place) for j in range(count)]


def _tokenized(captions: dict) -> dict:
  """pycocoevalcap's own tokenization of {key: [caption]}."""
  return PTBTokenizer().tokenize({k: [{'caption': c} for c in v] for k, v in captions.items()})


@needs_java
def test_three_pairs_worked_by_hand(monkeypatch, capfd):
  # METEOR has no hand-workable form; the comparison test below covers it.
  class NoMeteor:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      pass

    def compute_score(self, gts, res):
      return 0.0, [0.0] * len(gts)

  monkeypatch.setattr(caption_metrics, '_Meteor', NoMeteor)
  references = {
    'same': ['A small left pleural effusion.'],
    'none': ['No acute fracture.'],
    'part': ['Mild left pleural effusion.'],
  }
  candidates = {
    'same': 'a small left\rpleural effusion',  # '\r' is whitespace, not a line break
    'none': 'Normal chest radiograph.',
    'part': 'Left pleural effusion!',
  }
  s = caption_metrics.score_items(references, candidates)
  assert s.metrics == caption_metrics.score(references, candidates)
  assert capfd.readouterr() == ('', '')  # Bleu and the Java tokenizer print nothing
  item = s.per_item
  # Tokenized (lower case, no punctuation): same = 'a small left pleural effusion' against
  # itself; none = 'normal chest radiograph' vs 'no acute fracture' (nothing shared);
  # part = 'left pleural effusion' (3 words) vs 'mild left pleural effusion' (4 words).

  # BLEU-1 per item: clipped unigram precision x brevity penalty exp(1 - r/c) when c < r.
  # same: 5/5, c = r = 5, so 1. none: 0/3, so 0. part: 3/3, c = 3 < r = 4: exp(1 - 4/3).
  assert item['same']['bleu1'] == pytest.approx(1.0, abs=1e-6)
  assert item['none']['bleu1'] == pytest.approx(0.0, abs=1e-6)
  assert item['part']['bleu1'] == pytest.approx(math.exp(-1 / 3), abs=1e-6)  # 0.716531
  # Corpus BLEU-1 pools counts: matched 5 + 0 + 3 = 8 of 5 + 3 + 3 = 11 candidate words;
  # c = 11 < r = 5 + 3 + 4 = 12, so 8/11 x exp(1 - 12/11).
  assert s.metrics['bleu1'] == pytest.approx(8 / 11 * math.exp(-1 / 11), abs=1e-6)  # 0.663554

  # ROUGE-L: LCS precision P and recall R, F = (1 + b^2) P R / (R + b^2 P), b = 1.2.
  # same: P = R = 1, F = 1. none: LCS 0, F = 0. part: LCS = 3 ('left pleural effusion'),
  # P = 3/3, R = 3/4: F = 2.44 x 0.75 / (0.75 + 1.44) = 1.83 / 2.19.
  rouge_part = 1.83 / 2.19  # 0.835616
  assert item['same']['rouge_l'] == pytest.approx(1.0, abs=1e-6)
  assert item['none']['rouge_l'] == pytest.approx(0.0, abs=1e-6)
  assert item['part']['rouge_l'] == pytest.approx(rouge_part, abs=1e-6)
  assert s.metrics['rouge_l'] == pytest.approx((1 + 0 + rouge_part) / 3, abs=1e-6)

  # CIDEr-D: 3 images, so an n-gram in d of the references weighs log 3 - log d:
  # a = log 3 for 'mild', 'mild left', ... (d = 1) and b = log 3/2 for 'left', 'pleural',
  # 'effusion', 'left pleural', 'pleural effusion', 'left pleural effusion' (d = 2, in
  # 'same' and 'part'). The score is 10 x the mean over n = 1..4 of the clipped cosine of
  # the tf-idf vectors, times exp(-delta^2 / 72), delta the difference in bigram counts.
  # same: identical vectors (every order has a weight > 0), cosine 1, delta 0: 10.
  # none: no shared n-gram: 0.
  # part: candidate n-grams all weigh b; the reference adds 'mild...' n-grams weighing a.
  #   n=1: 3b^2 / (sqrt(3) b x sqrt(a^2 + 3b^2)) = sqrt(3) b / sqrt(a^2 + 3b^2)
  #   n=2: 2b^2 / (sqrt(2) b x sqrt(a^2 + 2b^2)) = sqrt(2) b / sqrt(a^2 + 2b^2)
  #   n=3: b^2 / (b x sqrt(a^2 + b^2)) = b / sqrt(a^2 + b^2)
  #   n=4: the candidate has no 4-gram: 0
  #   delta = 2 - 3 bigrams: penalty exp(-1/72).
  a, b = math.log(3), math.log(1.5)
  cosines = (
    math.sqrt(3) * b / math.sqrt(a**2 + 3 * b**2)  # 0.538897
    + math.sqrt(2) * b / math.sqrt(a**2 + 2 * b**2)  # 0.464187
    + b / math.sqrt(a**2 + b**2)  # 0.346244
  )
  cider_part = 10 * math.exp(-1 / 72) * cosines / 4  # 3.325942
  assert item['same']['cider_d'] == pytest.approx(10.0, abs=1e-6)
  assert item['none']['cider_d'] == pytest.approx(0.0, abs=1e-6)
  assert item['part']['cider_d'] == pytest.approx(cider_part, abs=1e-6)
  assert s.metrics['cider_d'] == pytest.approx((10 + 0 + cider_part) / 3, abs=1e-6)


@pytest.fixture(scope='module')
def radiology_set():
  """60 studies with 2-4 paraphrased references and candidates of every kind: scored by `score`
  and, for METEOR, by pycocoevalcap directly (the other scorers need no JVM)."""
  references, candidates = {}, {}
  for i in range(60):
    seed = 1000 + i
    captions = _paraphrases(seed, 2 + i % 3 + 1)
    references[f'study-{i}'] = captions[:-1]
    kind = i % 5
    if kind == 0:  # a paraphrase the references lack
      candidates[f'study-{i}'] = captions[-1]
    elif kind == 1:  # another study's caption
      candidates[f'study-{i}'] = _paraphrases(seed + 500, 1)[0]
    elif kind == 2:  # one of its references, every other word dropped
      candidates[f'study-{i}'] = ' '.join(captions[0].split()[::2])
    elif kind == 3:  # one of its references, exactly
      candidates[f'study-{i}'] = captions[0]
    else:  # punctuation the tokenizer removes, parentheses it keeps as -lrb- / -rrb-
      candidates[f'study-{i}'] = f'({captions[-1]}); see prior, e.g. ...'
  candidates['study-4'] = ''  # an empty candidate

  gts = _tokenized(references)
  res = _tokenized({k: [c] for k, c in candidates.items()})
  # pycocoevalcap's own METEOR, started first so that its JVM loads while `score` runs.
  meteor = Meteor()
  started = []

  class RecordedMeteor(Meteor):
    def __init__(self):
      super().__init__()
      started.append(self)

  try:
    with pytest.MonkeyPatch.context() as m:
      m.setattr(caption_metrics, 'Meteor', RecordedMeteor)
      scores = caption_metrics.score_items(references, candidates)
    meteor_expected = meteor.compute_score(gts, res)
  finally:
    meteor.meteor_p.stdin.close()
    meteor.meteor_p.wait()
    meteor.meteor_p.stdout.close()
    meteor.meteor_p.stderr.close()
  return gts, res, meteor_expected, scores, started


@needs_java
def test_score_equals_pycocoevalcap_on_the_same_tokens(radiology_set):
  gts, res, (meteor, meteor_items), s, _ = radiology_set
  bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
  rouge, rouge_items = Rouge().compute_score(gts, res)
  cider, cider_items = Cider().compute_score(gts, res)
  expected = dict(zip(caption_metrics.METRICS, [*bleu, meteor, rouge, cider]))
  items = dict(zip(caption_metrics.METRICS, [*bleu_items, meteor_items, rouge_items, cider_items]))

  assert list(s.metrics) == ['bleu1', 'bleu2', 'bleu3', 'bleu4', 'meteor', 'rouge_l', 'cider_d']
  for metric in caption_metrics.METRICS:
    assert s.metrics[metric] == pytest.approx(expected[metric], abs=1e-6), metric
    got = [s.per_item[k][metric] for k in gts]
    np.testing.assert_allclose(got, items[metric], rtol=0, atol=1e-6, err_msg=metric)
  # The set is not degenerate: the metrics are spread out.
  assert 0.1 < s.metrics['bleu4'] < 0.9 and 0.5 < s.metrics['cider_d'] < 9


@needs_java
def test_score_ends_its_meteor_process(radiology_set):
  *_, started = radiology_set
  assert len(started) == 1
  assert started[0].meteor_p.poll() == 0


@needs_java
def test_best_cider_d_is_the_pycocoevalcap_maximum():
  references = {f'k{i}': _paraphrases(3000 + i, 1 + i % 4) for i in range(20)}
  others = [c for j in range(45) for c in _paraphrases(4000 + j, 1)]
  # Exact references of a few keys (k0's twice: ties go to the first), an empty caption
  # and one with repeated words (counts clipped by the references').
  repeated = 'the the the left left of of the'
  bank = others[:10] + [references['k0'][0]] + others[10:30] + [references['k0'][0]]
  bank += [references['k1'][1], references['k5'][0], '', repeated] + others[30:] + others[:9]
  assert len(bank) == 60

  matrix = caption_metrics.cider_d_matrix(references, bank)
  best = caption_metrics.best_cider_d(references, bank)

  # pycocoevalcap: one Cider call per bank caption, as every key's candidate, so the
  # document frequencies are those of all the references.
  gts = _tokenized(references)
  tokens = _tokenized({j: [c] for j, c in enumerate(bank)})
  expected = np.stack(
    [Cider().compute_score(gts, {k: tokens[j] for k in gts})[1] for j in range(len(bank))]
  )
  assert matrix.shape == (60, 20)
  np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-6)
  assert list(best) == list(references)
  for col, key in enumerate(references):
    assert expected[best[key], col] == pytest.approx(expected[:, col].max(), abs=1e-9), key
  assert best['k0'] == 10 and matrix[10, 0] == pytest.approx(10.0)
  assert matrix[31, 0] == matrix[10, 0]
  assert best['k5'] == 33

  # Limited to the allowed captions: k0 may not take index 10 (its twin 31 remains), k5 not
  # 33, and k7 only 40..44.
  allowed = np.ones((20, 60), bool)
  allowed[0, 10] = allowed[5, 33] = False
  allowed[7] = np.isin(np.arange(60), range(40, 45))
  limited = caption_metrics.best_cider_d(references, bank, allowed=allowed)
  assert limited['k0'] == 31 and limited['k5'] != 33 and 40 <= limited['k7'] < 45
  masked = np.where(allowed.T, expected, -np.inf)
  for col, key in enumerate(references):
    assert allowed[col, limited[key]]
    assert expected[limited[key], col] == pytest.approx(masked[:, col].max(), abs=1e-9), key


@pytest.fixture
def no_java(monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  caption_metrics.java_unavailable.cache_clear()
  yield
  caption_metrics.java_unavailable.cache_clear()


def test_without_java_the_metrics_are_unavailable(no_java):
  reason = caption_metrics.java_unavailable()
  assert reason.startswith('java not found on PATH') and '\n' not in reason
  with pytest.raises(caption_metrics.CaptionMetricsUnavailable, match='java not found') as e:
    caption_metrics.score({'a': ['left effusion']}, {'a': 'left effusion'})
  assert e.value.reason == reason
  with pytest.raises(caption_metrics.CaptionMetricsUnavailable, match='java not found'):
    caption_metrics.best_cider_d({'a': ['left effusion']}, ['left effusion'])


def test_records_without_references_are_user_errors():
  with pytest.raises(UserError, match="without a reference caption: 1 of 2 \\(e.g. 'b'\\)"):
    caption_metrics.score({'a': ['x'], 'b': []}, {'a': 'x', 'b': 'y'})
  with pytest.raises(UserError, match='caption bank is empty'):
    caption_metrics.best_cider_d({'a': ['x']}, [])
  with pytest.raises(ValueError, match='different keys'):
    caption_metrics.score({'a': ['x']}, {'b': 'x'})
  with pytest.raises(UserError, match='may take no caption of the bank: 1 of 2'):
    caption_metrics.best_cider_d({'a': ['x'], 'b': ['y']}, ['x', 'y'], np.array([[1, 0], [0, 0]]))
  with pytest.raises(
    ValueError, match=r'allowed has shape \(2, 2\), not \(keys, bank\) = \(1, 2\)'
  ):
    caption_metrics.best_cider_d({'a': ['x']}, ['x', 'y'], np.ones((2, 2), bool))


@needs_java
def test_score_sets_equals_scoring_each_set_alone(radiology_set):
  gts, res, *_ = radiology_set
  references = {k: list(v) for k, v in list(gts.items())[:12]}
  a = {k: res[k][0] for k in references}
  b = {k: v[0] for k, v in references.items()}  # each key's first reference
  both = caption_metrics.score_sets(references, {'a': a, 'b': b})
  assert both['a'].metrics != both['b'].metrics
  # The second set, scored alone: its slice of the shared tokenization is its own.
  for metric, value in caption_metrics.score(references, b).items():
    assert both['b'].metrics[metric] == pytest.approx(value, abs=1e-9), metric
