"""Image-text retrieval: Recall@K, mean and median rank, image->text and text->image.

`config.evals.<name> = {'type': 'retrieval', 'ks': (1, 5, 10), 'gallery_size': 0, 'seed': 0}`
gives `<name>.gallery_size`, `<name>.{i2t,t2i}.R@<k>` and
`<name>.{i2t,t2i}.{mean,median}_rank`. The gallery is every record of the
split, or `gallery_size` of them drawn with `seed` (PMC-CLIP reports 2,000).
An image with several captions (a record's `captions`, or records that show
the same image, equal bytes) is one image: image->text counts a hit when any
of its captions is in the top k of all the gallery's captions, and
text->image asks each caption for its image among the distinct images. A wrong
answer scoring exactly as the right one ranks above it, unless it is the same
caption text: a collapsed model scores at chance, not perfectly.
"""

import numpy as np


def ranks(image_emb: np.ndarray, text_emb: np.ndarray, image_of_text: np.ndarray, text_keys=None):
  """1-based ranks of the right answer: (per image, per caption).

  `image_emb` [U, D] holds distinct images, `text_emb` [N, D] captions, and
  caption n shows image `image_of_text[n]`. An image's rank is that of its
  best-scoring caption among the other images' captions; a caption's, that of
  its image. A wrong answer scoring as the right one counts above it (so that a
  model whose embeddings collapse, or are not finite, ranks at chance, not first),
  but for captions with the same `text_keys` (default: all distinct) as the right
  one: the same text, which any model scores alike.
  """
  sim = image_emb.astype(np.float32) @ text_emb.astype(np.float32).T  # [U, N]
  sim = np.nan_to_num(sim, nan=np.finfo(np.float32).min)  # below every finite score
  own = image_of_text[None, :] == np.arange(len(image_emb))[:, None]
  best_own = np.where(own, sim, -np.inf).argmax(axis=1)
  keys = np.arange(len(text_emb)) if text_keys is None else np.asarray(text_keys)
  text_id = np.unique(keys, return_inverse=True)[1].reshape(-1)
  same_text = text_id[None, :] == text_id[best_own][:, None]
  best = sim[np.arange(len(image_emb)), best_own]
  image_ranks = 1 + np.sum(~own & ~same_text & (sim >= best[:, None]), axis=1)
  right = sim[image_of_text, np.arange(len(image_of_text))]
  text_ranks = 1 + np.sum(~own & (sim >= right[None, :]), axis=0)
  return image_ranks, text_ranks


def retrieval_metrics(image_emb, text_emb, ks=(1, 5, 10), image_keys=None, text_keys=None) -> dict:
  """Recall@K and mean/median rank both ways of records paired row by row.

  Records with equal `image_keys` show one image (default: every record its own);
  captions with equal `text_keys` (their texts) are the same caption (see `ranks`).
  """
  n = len(text_emb)
  keys = np.arange(n) if image_keys is None else np.asarray(image_keys)
  _, first, image_of_text = np.unique(keys, return_index=True, return_inverse=True)
  image_ranks, text_ranks = ranks(image_emb[first], text_emb, image_of_text.reshape(-1), text_keys)
  out = {'gallery_size': float(n)}
  for name, rank in (('i2t', image_ranks), ('t2i', text_ranks)):
    for k in ks:
      out[f'{name}.R@{k}'] = float(np.mean(rank <= k))
  for name, rank in (('i2t', image_ranks), ('t2i', text_ranks)):
    out[f'{name}.mean_rank'] = float(np.mean(rank))
    out[f'{name}.median_rank'] = float(np.median(rank))
  return out


class Evaluator:
  """Retrieval over the records of the evaluated split (the gallery)."""

  def __init__(self, ks=(1, 5, 10), gallery_size=0, seed=0):
    self.ks = tuple(int(k) for k in ks)
    self.gallery_size = int(gallery_size)
    self.seed = int(seed)

  def __call__(self, variables, split, embedder) -> dict:
    del variables, embedder  # the split's embeddings are all it needs
    rows = np.arange(len(split))
    if 0 < self.gallery_size < len(split):
      rows = np.sort(
        np.random.default_rng(self.seed).choice(rows, self.gallery_size, replace=False)
      )
    text, record, texts = split.all_captions(rows)
    keys = np.asarray(split.meta['image_key'])[record]
    out = retrieval_metrics(split.image[record], text, self.ks, keys, texts)
    return {**out, 'gallery_size': float(len(rows))}
