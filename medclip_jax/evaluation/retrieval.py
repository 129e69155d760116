"""Image-text retrieval: Recall@K of each record's own caption, and of its own image.

`config.evals.<name> = {'type': 'retrieval', 'ks': (1, 5, 10)}` gives the keys
`<name>.gallery_size` and `<name>.{i2t,t2i}.R@<k>`.
"""

import numpy as np


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Recall@K of the paired item, image->text and text->image.

  Row i of each array is a pair; ties count against the model.
  """
  sim = image_emb.astype(np.float32) @ text_emb.astype(np.float32).T
  positive = np.diag(sim)
  rank_i2t = (sim > positive[:, None]).sum(axis=1)
  rank_t2i = (sim > positive[None, :]).sum(axis=0)
  out = {'gallery_size': float(len(positive))}
  for name, rank in (('i2t', rank_i2t), ('t2i', rank_t2i)):
    for k in ks:
      out[f'{name}.R@{k}'] = float(np.mean(rank < k))
  return out


class Evaluator:
  """Retrieval over every record of the evaluated split (the gallery)."""

  def __init__(self, ks=(1, 5, 10)):
    self.ks = tuple(int(k) for k in ks)

  def __call__(self, variables, split, embedder) -> dict:
    del variables, embedder  # the split's embeddings are all it needs
    return retrieval_metrics(split.image, split.text, self.ks)
