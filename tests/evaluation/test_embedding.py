"""The split embedder: every caption of an image with several is embedded and evaluated."""

import numpy as np

from medclip_jax.data import prepare
from medclip_jax.training.setup import Setup
from tests import helpers


def test_images_with_two_captions_keep_both_and_retrieval_scores_them(tiny_config, tmp_path):
  csv = helpers.write_labelled_manifest(tmp_path / 'raw', count=24, captions_per_image=2)
  data = tmp_path / 'data'
  info = prepare.prepare('manifest', str(data), input=csv, **helpers.LABELLED_MANIFEST_OPTIONS)
  assert info['converted'] == 24 and info['skipped'] == []
  assert sum(s['captions'] for s in info['splits'].values()) == 48
  config = tiny_config()
  config.data.dir = str(data)
  config.evals = {'retrieval': {'type': 'retrieval', 'ks': (1, 5)}}
  setup = Setup.create(config)
  variables = setup.init_state().variables()
  evaluation = setup.evaluation(info['labels'])
  split = evaluation.embedder.encode_split(variables, 'test', info['labels'])
  n = len(split)
  assert split.text.shape[0] == split.more_text.shape[0] == n > 0
  np.testing.assert_array_equal(split.more_text_record, np.arange(n))
  emb, record, texts = split.all_captions()
  assert texts == [c[0] for c in split.meta['captions']] + [c[1] for c in split.meta['captions']]
  assert all(' image 1 of the ' in c[1] for c in split.meta['captions'])
  second = evaluation.embedder.encode_strings(variables, texts[n:])
  np.testing.assert_allclose(emb[n:], second, atol=1e-5)
  np.testing.assert_array_equal(record, np.concatenate([np.arange(n), np.arange(n)]))
  results, _ = evaluation(variables)
  assert results['retrieval.gallery_size'] == n
