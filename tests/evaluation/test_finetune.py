"""Fine-tuning: a copy of the image tower and a head learn each field; the model stays as it was."""

import jax
import numpy as np

from medclip_jax.data import pipeline
from medclip_jax.evaluation import finetune
from medclip_jax.training import checkpointing
from medclip_jax.training import setup


def test_fine_tuned_copies_are_scored_and_the_evaluated_model_is_untouched(trained_run):
  config, workdir, _ = trained_run
  state = setup.restore_on_one_device(config, checkpointing.Checkpointer(str(workdir), keep=3), 12)
  variables = state.variables()
  before = jax.device_get(variables)
  labels = pipeline.dataset_info(config.data)['labels']
  embedder = setup.evaluation(config, labels).embedder
  split = embedder.encode_split(variables, 'test', labels, texts=False)
  evaluator = finetune.Evaluator(fields=('modality', 'body_part'), fractions=(0.1, 1.0), steps=3)
  out = evaluator(variables, split, embedder)
  for field in ('modality', 'body_part'):
    for fraction in ('10%', '100%'):
      assert 0 <= out[f'{field}.{fraction}.balanced_accuracy'] <= 1
      assert 0 <= out[f'{field}.{fraction}.auroc'] <= 1
    assert out[f'{field}.100%.train_examples'] == 96
  assert set(out['details']['table']) == {'modality', 'body_part'}
  for a, b in zip(jax.tree.leaves(jax.device_get(variables)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_a_field_with_one_training_class_is_skipped_with_a_warning(
  trained_run, monkeypatch, caplog
):
  config, workdir, _ = trained_run
  state = setup.restore_on_one_device(config, checkpointing.Checkpointer(str(workdir), keep=3), 12)
  labels = pipeline.dataset_info(config.data)['labels']
  embedder = setup.evaluation(config, labels).embedder
  split = embedder.encode_split(state.variables(), 'test', labels, texts=False)
  encode = embedder.encode_split

  def one_modality(variables, name, vocabs, texts=True):
    out = encode(variables, name, vocabs, texts=texts)
    if name == 'train':  # every training image of one modality: a head would always be right
      out.labels['modality'][:] = 0
    return out

  monkeypatch.setattr(embedder, 'encode_split', one_modality)
  evaluator = finetune.Evaluator(fields=('modality', 'body_part'), fractions=(1.0,), steps=1)
  out = evaluator(state.variables(), split, embedder)
  assert not any(key.startswith('modality.') for key in out) and 'body_part.100%.auroc' in out
  assert "fine-tuning: 'modality' is not scored: every labelled record of the 'train'" in (
    caplog.text
  )
