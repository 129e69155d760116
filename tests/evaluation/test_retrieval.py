"""Retrieval: Recall@K both ways, and the keys it reports."""

import numpy as np

from medclip_jax.evaluation import retrieval
from tests import helpers


def test_retrieval_metrics_on_a_known_similarity():
  # Every image's own caption is its best match, but caption 2 is closer to
  # image 0 (0.6) than to its own image 2 (0.5).
  image = np.eye(3, dtype=np.float32)
  text = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0, 0.5]], np.float32)
  r = retrieval.retrieval_metrics(image, text, ks=(1, 2))
  assert r['gallery_size'] == 3
  assert r['i2t.R@1'] == 1.0
  assert r['t2i.R@1'] == 2 / 3 and r['t2i.R@2'] == 1.0


def test_mean_and_median_ranks_are_one_based():
  image = np.eye(3, dtype=np.float32)
  text = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0, 0.5]], np.float32)
  r = retrieval.retrieval_metrics(image, text, ks=(1,))
  # text->image ranks: 1, 1, 2 (caption 2 is nearer image 0); image->text: 1, 1, 1.
  assert r['t2i.mean_rank'] == 4 / 3 and r['t2i.median_rank'] == 1.0
  assert r['i2t.mean_rank'] == 1.0


def test_an_image_with_several_captions_hits_when_any_is_in_the_top_k():
  # Records 0 and 1 show the same image; record 1's caption is the image's best match.
  image = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
  text = np.array([[0.2, 0.1, 0.97], [1, 0, 0], [0, 1, 0]], np.float32)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  r = retrieval.retrieval_metrics(image, text, ks=(1,), image_keys=['a', 'a', 'b'])
  assert r['gallery_size'] == 3
  assert r['i2t.R@1'] == 1.0  # both distinct images find one of their captions first
  # Caption 0 ranks the distinct images: 'a' (0.2) above 'b' (0.1).
  assert r['t2i.R@1'] == 1.0
  alone = retrieval.retrieval_metrics(image, text, ks=(1,))
  assert alone['i2t.R@1'] == 2 / 3  # as separate images, record 0's caption is not its best


def test_a_record_with_two_captions_hits_when_either_is_in_the_top_k():
  # Record 0 has captions 'a0' (below record 1's 'b' for image 0) and 'a1' (its best match).
  image = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  first = np.array([[0.1, 0.8, 0.6], [0.3, 0.95, 0], [0, 0, 1]], np.float32)
  second = np.array([[1, 0, 0]], np.float32)
  split = helpers.encoded_split(
    'test',
    image,
    first,
    more_text=second,
    more_text_record=[0],
    captions=[['a0', 'a1'], ['b'], ['c']],
  )
  r = retrieval.Evaluator(ks=(1,))(None, split, None)
  assert r['gallery_size'] == 3
  assert r['i2t.R@1'] == 1.0  # image 0's top caption is a1, one of its own
  # Every caption asks for its image: a0 finds image 1 (0.8) first, a1, b and c their own.
  assert r['t2i.R@1'] == 3 / 4
  one_caption = helpers.encoded_split('test', image, first)
  assert retrieval.Evaluator(ks=(1,))(None, one_caption, None)['i2t.R@1'] == 2 / 3


def test_a_fixed_gallery_is_sampled_with_its_seed():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(50, 8))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  split = helpers.encoded_split('test', emb, emb)
  one = retrieval.Evaluator(ks=(1,), gallery_size=20, seed=1)(None, split, None)
  assert one['gallery_size'] == 20 and one['i2t.R@1'] == 1.0
  assert one == retrieval.Evaluator(ks=(1,), gallery_size=20, seed=1)(None, split, None)


def test_a_collapsed_or_non_finite_model_ranks_at_chance_not_first():
  rng = np.random.default_rng(0)
  spread = rng.normal(size=(40, 8)).astype(np.float32)
  spread /= np.linalg.norm(spread, axis=1, keepdims=True)
  same = np.tile(spread[:1], (40, 1))
  for image, text in ((same, spread), (spread, same), (np.zeros_like(spread), spread)):
    r = retrieval.retrieval_metrics(image, text, ks=(1,))
    assert r['i2t.R@1'] <= 0.1 and r['t2i.R@1'] <= 0.1, r
  nan = np.full_like(spread, np.nan)
  r = retrieval.retrieval_metrics(nan, spread, ks=(1,))
  assert r['i2t.R@1'] == r['t2i.R@1'] == 0 and r['i2t.mean_rank'] == 40


def test_another_records_caption_of_the_same_text_is_as_right_as_its_own():
  # Records 0 and 1 are two images captioned alike: their caption embeddings are equal.
  image = np.array([[1, 0, 0], [0.9, 0.43, 0], [0, 0, 1]], np.float32)
  text = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32)
  alike = retrieval.retrieval_metrics(image, text, ks=(1,), text_keys=['normal', 'normal', 'x'])
  assert alike['i2t.R@1'] == 1.0
  apart = retrieval.retrieval_metrics(image, text, ks=(1,))
  assert apart['i2t.R@1'] == 1 / 3  # as different texts, each tie counts against
