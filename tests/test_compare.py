"""The seeds' comparison: a starting model, fine-tuned on captions and on labels, in one table."""

import json
import shutil

import pytest

from medclip_jax import compare
from medclip_jax.errors import UserError
from medclip_jax.training import checkpointing


def test_three_models_one_table_and_a_chart(trained_run, tiny_config, tmp_path, capsys):
  _, init, _ = trained_run
  config = tiny_config()
  config.compare.steps = 2
  config.compare.label_text = '{modality} of the {body_part}.'
  rows = compare.compare(config, str(init), str(tmp_path))
  assert list(rows) == ['start', 'captions', 'labels']
  saved = json.loads((tmp_path / 'compare.json').read_text())
  assert saved['results'] == rows and saved['label_text'] == '{modality} of the {body_part}.'
  lines = (tmp_path / 'compare.md').read_text().splitlines()
  assert [line.split(' | ')[0] for line in lines[2:]] == ['| start', '| captions', '| labels']
  assert 'zeroshot.body_part.top1' in lines[0] and 'retrieval.i2t.R@10' in lines[0]
  assert (tmp_path / 'compare.png').read_bytes()[:4] == b'\x89PNG'
  out = capsys.readouterr().out
  # Both runs started from the model in init, and trained on their own text.
  assert out.count(f'initialised from the model in {init}') == 2
  assert 'training text: captions' in out
  assert "training text: '{modality} of the {body_part}.' filled from labels" in out
  for name in ('captions', 'labels'):
    ckpt = checkpointing.Checkpointer(str(tmp_path / name), keep=3)
    assert ckpt.latest_step() == 2
    ckpt.close()

  # Run again: complete, the same table; from another model: refused before anything runs.
  assert compare.compare(config, str(init), str(tmp_path)) == rows
  other = tmp_path.parent / 'other_model'
  shutil.copytree(init / 'checkpoints', other / 'checkpoints')
  with pytest.raises(UserError, match=f'holds a fine-tune of {init}, not of {other}'):
    compare.compare(tiny_config(), str(other), str(tmp_path))
