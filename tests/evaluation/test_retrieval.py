"""Retrieval: Recall@K both ways, and the keys it reports."""

import numpy as np

from medclip_jax.evaluation import retrieval


def test_retrieval_metrics_on_a_known_similarity():
  # Every image's own caption is its best match, but caption 2 is closer to
  # image 0 (0.6) than to its own image 2 (0.5).
  image = np.eye(3, dtype=np.float32)
  text = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0, 0.5]], np.float32)
  r = retrieval.retrieval_metrics(image, text, ks=(1, 2))
  assert r['gallery_size'] == 3
  assert r['i2t.R@1'] == 1.0
  assert r['t2i.R@1'] == 2 / 3 and r['t2i.R@2'] == 1.0
