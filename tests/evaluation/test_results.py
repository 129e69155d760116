"""Results files: written whole or not at all, and one cut short counts as not written, so
that its step is evaluated again."""

import json

import pytest

from medclip_jax.evaluation import results


def test_an_interrupted_write_keeps_the_file_before_it(tmp_path, monkeypatch):
  results.write(str(tmp_path), 12, 'test', {'retrieval.i2t.R@1': 0.5})

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(results.os, 'replace', interrupted)
  with pytest.raises(KeyboardInterrupt):
    results.write(str(tmp_path), 12, 'test', {'retrieval.i2t.R@1': 0.9})
  monkeypatch.undo()
  assert results.read(str(tmp_path), 12, 'test') == {'retrieval.i2t.R@1': 0.5}


def test_a_file_cut_short_counts_as_not_written(tmp_path):
  target = results.write(str(tmp_path), 12, 'test', {'retrieval.i2t.R@1': 0.5})
  target.write_text(target.read_text()[:20])  # as an older version could leave it
  assert not results.exists(str(tmp_path), 12, 'test')
  assert results.read(str(tmp_path), 12, 'test') == {}
  assert results.recorded(str(tmp_path), 12) is None
  results.write(str(tmp_path), 12, 'test', {'retrieval.i2t.R@1': 0.5})
  assert json.loads(target.read_text())['split'] == 'test'
