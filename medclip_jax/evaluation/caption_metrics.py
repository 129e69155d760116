"""COCO caption metrics for caption-by-retrieval, and the CIDEr-D oracle over a caption bank.

Caption-by-retrieval scores the top-1 caption retrieved for each evaluation
image against that image's reference captions, exactly as the COCO caption
evaluation does, so the numbers are comparable with published captioning
results: every string goes through pycocoevalcap's PTB tokenizer (lower case,
punctuation removed) and is scored by pycocoevalcap's own scorers over the
whole set at once (CIDEr-D's document frequencies are corpus-level). `score`
gives {key: corpus value}, `score_items` also every item's values. The keys:

  bleu1..bleu4  pycocoevalcap Bleu(4), corpus-level ('closest' reference length)
  meteor        pycocoevalcap Meteor (METEOR 1.5, '-l en -norm')
  rouge_l       pycocoevalcap Rouge (ROUGE-L F-measure, beta 1.2), mean over items
  cider_d       pycocoevalcap Cider, which is CIDEr-D (clipped n-gram counts and a
                Gaussian length penalty, sigma 6, x10), mean over items

`best_cider_d` is the oracle for retrieval: for each image, the bank caption
with the highest CIDEr-D. Scoring every (image, bank caption) pair through
pycocoevalcap is far too slow (1,000 images x 8,000 captions), so it
reimplements pycocoevalcap 1.2's `cider_scorer.py` with sparse matrices, with
the document frequencies of all the references, as `score` would use.

The tokenizer and METEOR run on Java; without it, both raise
`CaptionMetricsUnavailable`, for callers to report the metrics as unavailable
(no other tokenizer is substituted: the numbers would not be COCO's).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from medclip_jax.errors import UserError

METRICS = ('bleu1', 'bleu2', 'bleu3', 'bleu4', 'meteor', 'rouge_l', 'cider_d')

# CIDEr-D's settings in pycocoevalcap's Cider: n-grams 1..4, length penalty sigma.
_N = 4
_SIGMA = 6.0


class CaptionMetricsUnavailable(RuntimeError):
  """The metrics cannot be computed here (no working Java); `reason` says why in one line."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class CaptionScores:
  """`metrics`: {metric: corpus value}; `per_item`: {key: {metric: that item's value}}.

  Corpus BLEU and METEOR pool their statistics over the items, so they are not
  the means of the per-item values; ROUGE-L and CIDEr-D are.
  """

  metrics: dict[str, float]
  per_item: dict[Hashable, dict[str, float]]


@functools.cache
def java_unavailable() -> str | None:
  """None when a working `java` is on PATH, else why not in one line (cached per process)."""
  java = shutil.which('java')
  if java is None:
    return (
      'java not found on PATH: METEOR and the PTB tokenizer need Java 8+; '
      'install a JRE (Debian: apt-get install default-jre-headless)'
    )
  try:
    subprocess.run([java, '-version'], capture_output=True, check=True, timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    return f'{java} -version failed ({e}): METEOR and the PTB tokenizer need a working Java 8+'
  return None


def _require_java() -> None:
  reason = java_unavailable()
  if reason is not None:
    raise CaptionMetricsUnavailable(reason)


class _QuietSubprocess:
  """Stands in for `subprocess` inside pycocoevalcap's tokenizer module: the Java tokenizer
  prints a line to stderr per call, which this sends to /dev/null."""

  PIPE = subprocess.PIPE

  @staticmethod
  def Popen(*args, **kwargs):  # noqa: N802 (the name it replaces)
    return subprocess.Popen(*args, stderr=subprocess.DEVNULL, **kwargs)


_tokenizer_lock = threading.Lock()


def _tokenize(strings: Sequence[str]) -> list[str]:
  """pycocoevalcap's PTB tokenization of each string, in one Java call."""
  # The tokenizer writes one line per caption and pairs the lines back by position, so a
  # line break it sees inside a caption (e.g. '\r') would misalign every later caption;
  # collapsing whitespace changes no token.
  captions = {i: [{'caption': ' '.join(s.split())}] for i, s in enumerate(strings)}
  with _tokenizer_lock:
    ptbtokenizer.subprocess = _QuietSubprocess
    try:
      tokenized = ptbtokenizer.PTBTokenizer().tokenize(captions)
    finally:
      ptbtokenizer.subprocess = subprocess
  if len(tokenized) != len(strings):
    raise RuntimeError(
      f'The PTB tokenizer returned {len(tokenized)} lines for {len(strings)} captions '
      f'(run java -cp {ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR} '
      'edu.stanford.nlp.process.PTBTokenizer on a file of them to see its error).'
    )
  return [tokenized[i][0] for i in range(len(strings))]


def _check_references(references: dict) -> None:
  if not references:
    raise UserError('There are no captions to score: the evaluated split has no records.')
  empty = [k for k, refs in references.items() if not refs]
  if empty:
    raise UserError(
      f'Records without a reference caption: {len(empty)} of {len(references)} (e.g. '
      f'{empty[0]!r}); caption metrics need at least one per record: drop those records.'
    )


def _tokenize_references(references: dict, extra: Sequence[str]) -> tuple[dict, list[str]]:
  """({key: tokenized references}, tokenized `extra`), in one tokenizer call."""
  flat = [s for refs in references.values() for s in refs]
  tokens = _tokenize(flat + list(extra))
  tokenized, start = {}, 0
  for key, refs in references.items():
    tokenized[key] = tokens[start : start + len(refs)]
    start += len(refs)
  if not any(s for refs in tokenized.values() for s in refs):
    raise UserError(
      'Every reference caption is empty after PTB tokenization (punctuation is removed), '
      "so there is nothing to score against: check the split's captions."
    )
  return tokenized, tokens[start:]


class _Meteor:
  """pycocoevalcap's Meteor, whose JVM (5 s to start) serves several scorings and then ends."""

  def __enter__(self):
    self.meteor = Meteor()
    return self.meteor

  def __exit__(self, *exc):
    # Meteor keeps its JVM until garbage collection; end it now: closing stdin ends it.
    process = self.meteor.meteor_p
    process.stdin.close()
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    process.stdout.close()
    process.stderr.close()
    # A failed compute_score leaves its lock held, and Meteor.__del__ takes that lock.
    self.meteor.lock = threading.Lock()


def score(
  references: dict[Hashable, list[str]], candidates: dict[Hashable, str]
) -> dict[str, float]:
  """{metric: corpus value} (`METRICS`) of `candidates[k]` against `references[k]`.

  Raw strings in, as the COCO evaluation takes them: all are PTB-tokenized in
  one Java call. Raises CaptionMetricsUnavailable without Java.
  """
  return score_items(references, candidates).metrics


def score_items(
  references: dict[Hashable, list[str]], candidates: dict[Hashable, str]
) -> CaptionScores:
  """`score`'s corpus values and every item's own values, for per-image files."""
  return score_sets(references, {'': candidates})['']


def score_sets(
  references: dict[Hashable, list[str]], candidate_sets: dict[str, dict[Hashable, str]]
) -> dict[str, CaptionScores]:
  """`score_items` of several candidate sets against the same references (e.g. a model's
  picks beside random and oracle ones), with one tokenizer call and one METEOR process."""
  for candidates in candidate_sets.values():
    if references.keys() != candidates.keys():
      raise ValueError(
        f'references and candidates have different keys ({len(references)} and '
        f'{len(candidates)} keys, {len(references.keys() ^ candidates.keys())} not in both).'
      )
  _check_references(references)
  _require_java()
  keys = list(references)
  names = list(candidate_sets)
  gts, tokens = _tokenize_references(
    references, [candidate_sets[name][k] for name in names for k in keys]
  )
  out = {}
  with _Meteor() as meteor:
    for i, name in enumerate(names):
      res = {k: [t] for k, t in zip(keys, tokens[i * len(keys) : (i + 1) * len(keys)])}
      bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)  # verbose prints to stdout
      meteor_score, meteor_items = meteor.compute_score(gts, res)
      rouge, rouge_items = Rouge().compute_score(gts, res)
      cider, cider_items = Cider().compute_score(gts, res)
      corpus = [*bleu, meteor_score, rouge, cider]
      items = [*bleu_items, meteor_items, rouge_items, cider_items]
      out[name] = CaptionScores(
        metrics={m: float(v) for m, v in zip(METRICS, corpus)},
        per_item={k: {m: float(v[j]) for m, v in zip(METRICS, items)} for j, k in enumerate(keys)},
      )
  return out


# --- CIDEr-D over a bank, vectorised -------------------------------------------------------
#
# For hypothesis h and reference r, pycocoevalcap's CIDEr-D is, per n-gram order n,
#   sum_g min(w_g tf_h(g), w_g tf_r(g)) w_g tf_r(g) / (|v_h,n| |v_r,n|)
# with w_g = log(#images) - log(max(1, df_g)) >= 0 and v the tf-idf vectors (norms over all
# their n-grams, including those no reference has), times exp(-(l_h - l_r)^2 / (2 sigma^2))
# where l is the number of BIGRAMS (pycocoevalcap counts `length` at n == 1, the bigrams);
# an image's score is 10 x the mean over n and its references. min(a, b) = sum_{t >= 1}
# [a >= t][b >= t] turns the clipped numerator into a few sparse products.


def _ngram_counts(tokens: str) -> list[Counter]:
  """[Counter of the n-grams of order n] for n = 1..4, as pycocoevalcap's precook."""
  words = tokens.split()
  return [
    Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, _N + 1)
  ]


def _bigram_length(tokens: str) -> int:
  return max(0, len(tokens.split()) - 1)


def _cider_d_blocks(
  tokenized_refs: list[list[str]], tokenized_bank: list[str], block_refs: int = 256
) -> Iterator[tuple[slice, np.ndarray]]:
  """(slice of images, float64 [len(bank), images in it] CIDEr-D) over the images in blocks."""
  ref_counts = [[_ngram_counts(r) for r in refs] for refs in tokenized_refs]
  df = Counter(g for refs in ref_counts for g in {g for c in refs for order in c for g in order})
  ref_len = math.log(len(tokenized_refs))

  def weight(g):
    return ref_len - math.log(max(1.0, df[g]))

  # Columns: the n-grams of the references (no other n-gram can match one).
  vocab = [{} for _ in range(_N)]
  for g in df:
    vocab[len(g) - 1].setdefault(g, len(vocab[len(g) - 1]))

  def matrices(counts: list[list[Counter]]):
    """Per order: [tf] CSR over the vocabulary, the tf-idf norms, its largest tf."""
    out = []
    for n in range(_N):
      rows, cols, tfs, norms = [], [], [], np.zeros(len(counts))
      for i, c in enumerate(counts):
        norms[i] = math.sqrt(sum((tf * weight(g)) ** 2 for g, tf in c[n].items()))
        for g, tf in c[n].items():
          if g in vocab[n]:
            rows.append(i)
            cols.append(vocab[n][g])
            tfs.append(tf)
      tf = sp.csr_matrix((tfs, (rows, cols)), shape=(len(counts), len(vocab[n])), dtype=np.float64)
      idf2 = np.array([weight(g) ** 2 for g in vocab[n]], dtype=np.float64)
      out.append((tf, norms, idf2, int(max(tfs, default=0))))
    return out

  hyp = matrices([_ngram_counts(h) for h in tokenized_bank])
  ref = matrices([c for refs in ref_counts for c in refs])
  # The hypotheses' side of the numerator per level t: [tf_h(g) >= t].
  hyp_levels = [[(tf >= t).astype(np.float64) for t in range(1, top + 1)] for tf, _, _, top in hyp]
  hyp_len = np.array([_bigram_length(h) for h in tokenized_bank], dtype=np.float64)
  ref_lengths = np.array([_bigram_length(r) for refs in tokenized_refs for r in refs], np.float64)
  sizes = np.array([len(refs) for refs in tokenized_refs])
  starts = np.concatenate([[0], np.cumsum(sizes)])

  image = 0
  while image < len(tokenized_refs):
    # Whole images per block: at least one, else as many as fit in `block_refs` references.
    end = max(image + 1, int(np.searchsorted(starts, starts[image] + block_refs, 'right')) - 1)
    r0, r1 = starts[image], starts[end]
    sim = np.zeros((len(tokenized_bank), r1 - r0))
    for n in range(_N):
      r_tf, r_norm, idf2, _ = ref[n]
      r_block = r_tf[r0:r1]
      r_weighted = r_block.multiply(idf2[None, :]).tocsr()  # w_g^2 tf_r(g)
      numerator = np.zeros_like(sim)
      for t, h_t in enumerate(hyp_levels[n], start=1):
        numerator += (h_t @ r_weighted.multiply(r_block >= t).T).toarray()
      denominator = hyp[n][1][:, None] * r_norm[None, r0:r1]
      # pycocoevalcap divides only when both norms are nonzero; the numerator is 0 otherwise.
      sim += np.divide(numerator, denominator, out=np.zeros_like(sim), where=denominator != 0)
    delta = hyp_len[:, None] - ref_lengths[None, r0:r1]
    sim *= np.exp(-(delta**2) / (2 * _SIGMA**2))
    # 10 x the mean over each image's references and over n.
    owner = np.repeat(np.arange(end - image), sizes[image:end])
    mean = sp.csr_matrix(
      (10.0 / _N / sizes[image:end][owner], (np.arange(r1 - r0), owner)),
      shape=(r1 - r0, end - image),
    )
    yield slice(image, end), np.asarray(sim @ mean)
    image = end


def _tokenize_with_bank(references: dict, bank: Sequence[str]) -> tuple[dict, list[str]]:
  _check_references(references)
  if not bank:
    raise UserError('The caption bank is empty: retrieval needs at least one caption to pick.')
  _require_java()
  return _tokenize_references(references, bank)


def cider_d_matrix(references: dict[Hashable, list[str]], bank: Sequence[str]) -> np.ndarray:
  """float64 [len(bank), len(references)]: the CIDEr-D of each bank caption for each key.

  Columns follow `references`' order; the document frequencies are those of
  all the references, as `score` uses. Raises CaptionMetricsUnavailable without Java.
  """
  gts, tokenized_bank = _tokenize_with_bank(references, bank)
  return np.concatenate([b for _, b in _cider_d_blocks(list(gts.values()), tokenized_bank)], axis=1)


def best_cider_d(
  references: dict[Hashable, list[str]], bank: Sequence[str], allowed: np.ndarray | None = None
) -> dict[Hashable, int]:
  """{key: index in `bank` of the caption with the highest CIDEr-D against references[key]}.

  `allowed` (bool [len(references), len(bank)], rows in `references`' order)
  limits each key to the bank captions marked True, e.g. not its own record's.
  Ties go to the lowest index. Raises CaptionMetricsUnavailable without Java.
  """
  if allowed is not None:
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != (len(references), len(bank)):
      raise ValueError(
        f'allowed has shape {allowed.shape}, not (keys, bank) = {(len(references), len(bank))}.'
      )
    if not allowed.any(axis=1).all():
      raise UserError(
        f'Images that may take no caption of the bank: {int((~allowed.any(axis=1)).sum())} of '
        f"{len(references)} (all its captions are excluded for them, e.g. as their own case's); "
        'use a bank with captions of other cases.'
      )
  gts, tokenized_bank = _tokenize_with_bank(references, bank)
  keys = list(gts)
  best = {}
  for block, scores in _cider_d_blocks(list(gts.values()), tokenized_bank):
    if allowed is not None:
      scores = np.where(allowed[block].T, scores, -np.inf)
    best.update(zip(keys[block], (int(i) for i in scores.argmax(axis=0))))
  return best
