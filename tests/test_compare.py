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
  config.data.image_size = 64  # the starting model was trained at 32 px: it reads 32
  config.train.warmup_steps = 5  # a recipe's, longer than the fine-tunes
  rows = compare.compare(config, str(init), str(tmp_path))
  assert list(rows) == ['start', 'captions', 'labels']
  saved = json.loads((tmp_path / 'compare.json').read_text())
  assert saved['results'] == rows and saved['label_text'] == '{modality} of the {body_part}.'
  lines = (tmp_path / 'compare.md').read_text().splitlines()
  assert [line.split(' | ')[0] for line in lines[2:]] == ['| start', '| captions', '| labels']
  assert 'zeroshot.body_part.top1' in lines[0] and 'retrieval.i2t.R@10' in lines[0]
  assert (tmp_path / 'compare.png').read_bytes()[:4] == b'\x89PNG'
  out = capsys.readouterr().out
  assert 'compare: the fine-tunes warm up over 0 steps, a tenth of their 2' in out
  # Both runs started from the model in init, and trained on their own text.
  assert out.count(f'initialised from the model in {init}') == 2
  assert 'training text: captions' in out
  assert "training text: '{modality} of the {body_part}.' filled from labels" in out
  for name in ('captions', 'labels'):
    ckpt = checkpointing.Checkpointer(str(tmp_path / name), keep=3)
    assert ckpt.latest_step() == 2
    assert ckpt.restore_config(2)['data']['image_size'] == 32
    ckpt.close()

  # Run again: complete, the same table. With other settings, whose fine-tunes would not be
  # comparable with a start row evaluated now: refused before anything runs.
  assert compare.compare(config, str(init), str(tmp_path)) == rows
  other = tmp_path.parent / 'other_model'
  shutil.copytree(init / 'checkpoints', other / 'checkpoints')
  fewer_steps = tiny_config()
  fewer_steps.compare.steps = 1
  other_evals = tiny_config()
  other_evals.evals.retrieval.gallery_size = 10
  for changed, given, expected in (
    (config, other, f"init '{init}', now '{other}'"),
    (fewer_steps, init, 'steps 2, now 1'),
    (other_evals, init, 'evals {'),
  ):
    given_config = changed.copy_and_resolve_references()
    given_config.compare.label_text = config.compare.label_text
    with pytest.raises(UserError, match='holds a comparison made with other settings') as error:
      compare.compare(given_config, str(given), str(tmp_path))
    assert expected in str(error.value) and 'Give a fresh --workdir' in str(error.value)
  assert json.loads((tmp_path / 'compare.json').read_text())['results'] == rows  # untouched
  # A starting run that trains on during the comparison would start the fine-tunes elsewhere.
  step = json.loads((tmp_path / 'compare.json').read_text())['init_step']
  with pytest.raises(UserError, match=f'moved on from step {step - 1} to step {step}'):
    compare._check_init_unchanged(str(init), step - 1)


def test_overrides_the_starting_model_fixes_are_named_as_ignored():
  argv = [
    '--config=configs/demo.py',
    '--config.model.embed_dim=64',
    '--config.data.max_text_length=16',
    '--config.data.dir=data/other',
    '--config.compare.steps=50',
    '--config.train.learning_rate=1e-4',
  ]
  assert compare.ignored_overrides(argv) == [
    '--config.model.embed_dim',
    '--config.data.max_text_length',
  ]


def test_a_comparison_needs_labels_or_a_label_text(tiny_config, tmp_path):
  config = tiny_config()
  config.compare.label_text = ''
  config.data.dir = str(tmp_path / 'unlabelled')
  shutil.copytree(tiny_config().data.dir, config.data.dir)
  info_file = tmp_path / 'unlabelled' / 'dataset_info.json'
  info = json.loads(info_file.read_text())
  info.pop('labels', None)
  info_file.write_text(json.dumps(info))
  with pytest.raises(UserError, match='has no label fields: give a labelled dataset'):
    compare.compare(config, str(tmp_path / 'unused'), str(tmp_path / 'compare'))


def test_the_chart_draws_many_classes_and_dollar_signs_and_nothing_without_accuracies(tmp_path):
  classes = [f'class {n}' for n in range(40)] + ['cost $5^$ cm']
  rows = {
    model: {f'zeroshot.finding.accuracy.{c}': (n % 10) / 10 for n, c in enumerate(classes)}
    for model in compare.MODELS
  }
  path = compare.chart(rows, {'finding': classes}, tmp_path / 'many.png')
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with Image.open(path) as image:
    assert image.height > 110 * 0.3 * len(classes)  # a row of bars per class
  empty = {model: {'retrieval.i2t.R@10': 0.5} for model in compare.MODELS}
  assert compare.chart(empty, {}, tmp_path / 'none.png') is None
  assert not (tmp_path / 'none.png').exists()
