"""Caption by retrieval: each image takes the closest caption of a bank, scored as COCO does.

`config.evals.<name> = {'type': 'caption', 'bank': 'train', 'top_k': 3, 'examples': 12,
'seed': 0}`. The bank is a split of the dataset (default: the training split's
captions) or a file: `.txt` (one caption a line) or `.csv` (a `caption`
column). An image never retrieves the caption of its own record, nor of any
record of its group (case or patient), when the bank is a split of the same
dataset; a file bank has no records to exclude. A split bank holds every
caption of its records (several for an image described more than once). The
top-1 caption of every image is scored against the image's reference captions
(all of them) in one call (`caption_metrics.score`: BLEU-1..4, METEOR,
ROUGE-L, CIDEr-D), reported as `<name>.<metric>`, beside two references that give the scores meaning:
`<name>.random.<metric>`, a random allowed bank caption per image, and
`<name>.oracle.<metric>`, the allowed bank caption with the best CIDEr-D
against the reference (the best any retrieval from this bank can do). Every
image's top-k captions with their similarities go to `captions.jsonl` beside
the results. Without Java the scores are reported unavailable, with the reason.
"""

from pathlib import Path

import numpy as np

from medclip_jax.data.caption_bank import read_bank_file
from medclip_jax.errors import UserError
from medclip_jax.evaluation import caption_metrics


def allowed(image_ids, image_groups, bank_ids, bank_groups) -> np.ndarray:
  """[N, M] True where image n may retrieve bank caption m: not its own record, not its group."""
  ids, groups = np.asarray(bank_ids), np.asarray(bank_groups)
  own = np.asarray(image_ids)[:, None] == ids[None, :]
  same_group = np.asarray(image_groups)[:, None] == groups[None, :]
  return ~(own | same_group)


class Evaluator:
  """Caption-by-retrieval with COCO caption metrics and random and oracle references."""

  def __init__(self, bank='train', top_k=3, examples=12, seed=0):
    self.bank, self.top_k, self.examples, self.seed = (
      str(bank),
      int(top_k),
      int(examples),
      int(seed),
    )
    if self.top_k < 1:
      raise ValueError(f'top_k must be 1 or more (the captions shown per image), got {top_k}')

  def check(self, embedder) -> None:
    if Path(self.bank).suffix.lower() in ('.txt', '.csv'):
      read_bank_file(self.bank)
    elif not embedder.split_size(self.bank):
      raise UserError(
        f'The caption bank is the {self.bank!r} split, which has no records; set the caption '
        "evaluator's bank to a split that has some, or to a .txt/.csv file of captions."
      )

  def _bank(self, variables, split, embedder):
    """(texts, embeddings [M, D], record ids or None, groups or None, description)."""
    if Path(self.bank).suffix.lower() in ('.txt', '.csv'):
      texts = read_bank_file(self.bank)
      return texts, embedder.encode_strings(variables, texts), None, None, f'{self.bank}'
    bank = embedder.encode_split(variables, self.bank, split.vocabs, images=False)
    emb, record, texts = bank.all_captions()
    ids, groups = (np.asarray(bank.meta[k])[record] for k in ('id', 'group'))
    return texts, emb, list(ids), list(groups), f'the {self.bank} split'

  def __call__(self, variables, split, embedder) -> dict:
    texts, bank_emb, bank_ids, bank_groups, what = self._bank(variables, split, embedder)
    n = len(split)
    if bank_ids is None:
      may = np.ones((n, len(texts)), bool)
    else:
      may = allowed(split.meta['id'], split.meta['group'], bank_ids, bank_groups)
      if not may.any(axis=1).all():
        raise UserError(
          f'Some {split.name} images have no caption in the bank ({what}) that is not of their '
          'own case or patient; use a bank with captions of other groups.'
        )
    sim = np.where(may, split.image @ bank_emb.T, -np.inf)
    top = np.argsort(-sim, axis=1, kind='stable')[:, : self.top_k]
    rng = np.random.default_rng(self.seed)
    chosen = {
      'model': top[:, 0],
      'random': np.array([rng.choice(np.flatnonzero(row)) for row in may]),
    }
    references = {i: list(split.meta['captions'][i]) for i in range(n)}
    details = {'bank': f'{what}, {len(texts)} captions'}
    results = {}
    try:
      oracle = caption_metrics.best_cider_d(references, texts, allowed=may)
      chosen['oracle'] = np.array([oracle[i] for i in range(n)])
      picked = {kind: {i: texts[j] for i, j in enumerate(p)} for kind, p in chosen.items()}
      scored = caption_metrics.score_sets(references, picked)
      scores = {kind: s.metrics for kind, s in scored.items()}
    except caption_metrics.CaptionMetricsUnavailable as e:
      details['unavailable'] = str(e)
      scores = {}
    for kind, metrics in scores.items():
      prefix = '' if kind == 'model' else f'{kind}.'
      results.update({f'{prefix}{k}': v for k, v in metrics.items()})
    if scores:
      details['scores'] = scores
    rows = [
      {
        'id': split.meta['id'][i],
        'references': references[i],
        'retrieved': [
          {
            'id': None if bank_ids is None else bank_ids[j],
            'caption': texts[j],
            'similarity': float(sim[i, j]),
          }
          for j in top[i]
        ],
      }
      for i in range(n)
    ]
    details['files'] = {'captions.jsonl': rows}
    details['examples'] = [
      {
        'id': row['id'],
        'image': embedder.image_bytes(split.name, i),
        'references': row['references'],
        'retrieved': [
          {'id': r['id'], 'caption': r['caption'], 'score': r['similarity']}
          for r in row['retrieved']
        ],
      }
      for i, row in enumerate(rows[: self.examples])
    ]
    return {**results, 'details': details}
