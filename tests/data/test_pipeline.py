"""Tests of medclip_jax.data.pipeline: preprocessing, crops, laterality-aware flips and the
training text."""

import io
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.errors import UserError
from tests.helpers import data_config


def _record(caption, image=None, labels=None, captions=None):
  if image is None:
    image = np.zeros((20, 30), np.uint8)
    image[:, :5] = 255  # a bright stripe on the image's left edge
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return records.encode(
    {
      'id': 'x',
      'group': 'x',
      'image': buf.getvalue(),
      'caption': caption,
      'labels': {'laterality': 'left'} if labels is None else labels,
      **({'captions': captions} if captions else {}),
    }
  )


@pytest.mark.parametrize(
  'caption,expected',
  [
    ('Mass in the left lung.', 'Mass in the right lung.'),
    ('Right knee: Left-sided effusion.', 'Left knee: Right-sided effusion.'),
    ('Bright lesion, no side.', 'Bright lesion, no side.'),
    ('Leftover contrast, righteous.', 'Leftover contrast, righteous.'),
    ('RLL consolidation, LUL clear.', 'LLL consolidation, RUL clear.'),
    ('Mediastinal shift leftward; Rt. effusion.', 'Mediastinal shift rightward; Lt. effusion.'),
    ('LEFT HILAR MASS', 'RIGHT HILAR MASS'),
    ('Dextroconvex scoliosis.', 'Levoconvex scoliosis.'),
    ('On levothyroxine.', 'On levothyroxine.'),  # a drug, not a side
  ],
)
def test_swap_laterality(caption, expected):
  assert pipeline.swap_laterality(caption) == expected


def test_eval_preprocess_shapes_dtypes_and_labels():
  pre = pipeline.Preprocess(data_config(), label_vocabs={'laterality': ['left', 'right']})
  ex = pre(_record('CT of the chest.'))
  assert ex['image'].shape == (16, 16, 3) and ex['image'].dtype == np.uint8
  assert ex['input_ids'].shape == (16,) and ex['input_ids'].dtype == np.int32
  assert ex['attention_mask'].sum() == 7  # [CLS] ct of the chest . [SEP]
  assert ex['label/laterality'] == 0


def _flipped(pre, caption, seed=0):
  ex = pre(_record(caption), np.random.default_rng(seed))
  return ex['image'][:, -1, 0].mean() > ex['image'][:, 0, 0].mean(), ex


def test_flip_swaps_the_caption_side():
  pre = pipeline.Preprocess(data_config(hflip_prob=1.0, crop_scale=(1.0, 1.0)), train=True)
  tok = pre.tokenizer
  flipped, ex = _flipped(pre, 'Mass in the left lung.')
  assert flipped
  assert 'right' in tok.decode(ex['input_ids'], skip_special_tokens=True)


def test_flip_skip_policy_leaves_lateral_captions_unflipped():
  pre = pipeline.Preprocess(
    data_config(hflip_prob=1.0, crop_scale=(1.0, 1.0), laterality='skip'), train=True
  )
  assert not _flipped(pre, 'Mass in the left lung.')[0]
  assert not _flipped(pre, 'RLL consolidation.')[0]
  assert _flipped(pre, 'Normal chest.')[0]


def test_a_side_a_flip_cannot_carry_over_is_never_flipped():
  pre = pipeline.Preprocess(data_config(hflip_prob=1.0, crop_scale=(1.0, 1.0)), train=True)
  for caption in ('RML collapse.', 'Lingular opacity.', 'Right middle lobe mass.'):
    flipped, ex = _flipped(pre, caption)
    assert not flipped, caption


def test_flips_are_off_by_default():
  pre = pipeline.Preprocess(data_config(crop_scale=(1.0, 1.0)), train=True)
  assert not any(_flipped(pre, 'Normal chest.', seed)[0] for seed in range(10))


def _text(pre, ex):
  return pre.tokenizer.decode(ex['input_ids'], skip_special_tokens=True)


def test_train_text_template_uses_labels_and_falls_back_to_the_caption():
  config = data_config(train_text='{modality} of the {body_part}.', max_text_length=32)
  train = pipeline.Preprocess(config, train=True)
  rng = np.random.default_rng(0)
  labelled = _record('Axial image, large mass.', labels={'modality': 'MRI', 'body_part': 'brain'})
  unlabelled = _record('Axial image, large mass.', labels={'modality': 'MRI'})
  assert _text(train, train(labelled, rng)) == 'mri of the brain.'
  assert _text(train, train(unlabelled, rng)) == 'axial image, large mass.'
  # Evaluation always pairs images with their captions.
  evaluation = pipeline.Preprocess(config, train=False)
  assert _text(evaluation, evaluation(labelled)) == 'axial image, large mass.'


def test_training_draws_one_of_an_images_captions_per_read_seeded_and_evaluation_the_first():
  captions = ['ct of the chest.', 'chest ct, no effusion.', 'axial chest ct.']
  raw = _record(captions[0], captions=captions)
  train = pipeline.Preprocess(data_config(max_text_length=16), train=True)
  drawn = [_text(train, train(raw, np.random.default_rng(seed))) for seed in range(30)]
  assert set(drawn) == set(captions)
  again = [_text(train, train(raw, np.random.default_rng(seed))) for seed in range(30)]
  assert again == drawn
  evaluation = pipeline.Preprocess(data_config(max_text_length=16))
  assert _text(evaluation, evaluation(raw)) == captions[0]


@pytest.mark.parametrize(
  'captions', [['only one'], ['first', ''], ['not the caption', 'second'], 'first']
)
def test_malformed_caption_lists_are_refused(captions):
  with pytest.raises(ValueError, match='captions must be a list of two or more'):
    _record('first', captions=captions)


def test_long_texts_are_truncated_and_flagged():
  pre = pipeline.Preprocess(data_config(max_text_length=8))
  short, long = pre(_record('CT of the chest.')), pre(_record('a b c d e f g h i j k'))
  assert short['truncated'] == 0 and long['truncated'] == 1
  assert long['attention_mask'].sum() == 8 and _text(pre, long) == 'a b c d e f'


@pytest.mark.parametrize(
  'template,message',
  [
    ('a scan.', 'names no label'),
    ('{} scan.', 'write fields as'),
    ('{modality!r} scan.', 'write fields as'),
    ('{modality scan.', 'Bad text template'),
  ],
)
def test_bad_text_templates_are_user_errors(template, message):
  with pytest.raises(UserError, match=message):
    pipeline.describe_train_text(data_config(train_text=template), {'labels': {'modality': []}})


def test_describe_train_text_checks_labels_and_counts_records_lacking_them():
  info = {
    'labels': {'modality': ['CT', 'MRI'], 'body_part': ['brain']},
    'splits': {'train': {'count': 10}},
    'label_counts': {'train': {'modality': {'CT': 4, 'MRI': 5}, 'body_part': {'brain': 10}}},
  }
  describe = lambda template: pipeline.describe_train_text(data_config(train_text=template), info)
  assert describe('{modality} scan.').endswith(
    '1 of 10 train records lack a label it names and keep their caption'
  )
  assert '1 of 10' in describe('{modality} of the {body_part}.')
  with pytest.raises(UserError, match='label.*plane.*its labels are body_part, modality'):
    describe('{plane} view.')
  assert pipeline.describe_train_text(data_config(), info) == 'training text: captions'


def test_entmlm_masks_the_training_captions_entities_and_evaluation_nothing():
  from medclip_jax.data import entities  # pylint: disable=import-outside-toplevel

  masking = entities.EntityMasking(entities.load_lexicon(), ratio=0.15)
  caption = 'Axial CT of the chest shows a small left pleural effusion.'
  train = pipeline.Preprocess(data_config(max_text_length=24), train=True, entity_masking=masking)
  ex = train(_record(caption), np.random.default_rng(0))
  tokenizer = train.tokenizer
  masked = ex['mlm_labels'] >= 0
  # The masked tokens hold [MASK]; their labels are the caption's own ids, which the
  # contrastive objectives still read unmasked.
  assert (ex['mlm_input_ids'][masked] == tokenizer.mask_token_id).all()
  np.testing.assert_array_equal(ex['mlm_labels'][masked], ex['input_ids'][masked])
  np.testing.assert_array_equal(ex['mlm_input_ids'][~masked], ex['input_ids'][~masked])
  words = tokenizer.convert_ids_to_tokens(ex['input_ids'][masked].tolist())
  for entity in ('ct', 'chest', 'left', 'pleural', 'effusion'):  # every word piece of each
    assert set(tokenizer.tokenize(entity)) <= set(words), (entity, words)
  assert ex['mlm_entities'] >= 5
  # The unmasked tokens and the truncation flag are those the pipeline gives without EntMLM.
  for text in (caption, caption * 3):
    ex = train(_record(text), np.random.default_rng(0))
    ids, mask, truncated = train.tokenize(text)
    np.testing.assert_array_equal(ex['input_ids'], ids)
    np.testing.assert_array_equal(ex['attention_mask'], mask)
    assert ex['truncated'] == truncated == (text != caption)
  evaluation = pipeline.Preprocess(data_config(max_text_length=24), entity_masking=masking)
  assert 'mlm_input_ids' not in evaluation(_record(caption))


def test_unpaired_records_are_mixed_in_at_their_shares(tmp_path):
  from medclip_jax.data import prepare  # pylint: disable=import-outside-toplevel

  prepare.prepare(
    'synthetic',
    str(tmp_path),
    num_train=40,
    num_val=0,
    num_test=0,
    image_size=32,
    unpaired_images=20,
    unpaired_texts=20,
  )
  unpaired = {'image_only': 0.25, 'text_only': 0.125, 'prompt': '{modality}: {finding} {nothing}.'}
  config = data_config(
    dir=str(tmp_path),
    image_size=32,
    mean=(0.485, 0.456, 0.406),
    unpaired=ml_collections.ConfigDict(unpaired),
  )
  info = records.read_dataset_info(str(tmp_path))
  assert pipeline.describe_unpaired(config, info) == (
    'training mix: 62% paired, 25% image-only, 12% text-only (image-only records paired with '
    "'{modality}: {finding} {nothing}.'; at least 20 of 20 lack a label it names, left out of "
    'theirs)'
  )
  batches = pipeline.train_iterator(
    config, seed=0, local_batch_size=16, process_index=0, process_count=1
  )
  tokenizer = pipeline.Preprocess(config).tokenizer
  for _ in range(4):
    batch = next(batches)
    kinds = np.bincount(batch['kind'], minlength=3)
    assert kinds.tolist() == [10, 4, 2]  # 16 x (0.625, 0.25, 0.125)
    np.testing.assert_array_equal(batch['has_image'], batch['kind'] != 2)
    # Text-only: blank images of the mean colour, 0 once normalised.
    blank = np.round(np.multiply(config.mean, 255))
    assert (batch['image'][batch['kind'] == 2] == blank).all()
    assert batch['image'][batch['kind'] != 2].reshape(14, -1).any(axis=1).all()
    for ids in batch['input_ids'][batch['kind'] == 1]:  # image-only: the prompt, filled
      text = tokenizer.decode(ids, skip_special_tokens=True)
      assert re.fullmatch(r'(ct|mri|x - ray|ultrasound) : \w+\.', text), text  # as decoded
  # Without shares, the stream and its columns are as before.
  plain = pipeline.train_iterator(
    data_config(dir=str(tmp_path), image_size=32),
    seed=0,
    local_batch_size=16,
    process_index=0,
    process_count=1,
  )
  assert 'kind' not in next(plain)


def test_a_share_of_a_kind_the_dataset_lacks_is_a_user_error(tmp_path):
  info = {'splits': {'train': {'count': 8}}, 'labels': {'finding': ['mass']}}
  config = data_config(
    dir=str(tmp_path),
    unpaired=ml_collections.ConfigDict(
      {'image_only': 0.2, 'text_only': 0.0, 'prompt': '{finding}'}
    ),
  )
  with pytest.raises(UserError, match=r'holds no image_only records .* --unpaired'):
    pipeline.describe_unpaired(config, info)
