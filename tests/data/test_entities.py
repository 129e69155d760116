"""Tests of medclip_jax.data.entities: lexicon matching, the entity mask with its random
whole-word top-up on the bundled tokenizer's word pieces, and the masked ids and labels."""

import math
from fractions import Fraction

import numpy as np
import pytest

from medclip_jax.data import entities
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.data.synthetic import labels as synthetic_labels
from medclip_jax.errors import UserError

MAX_LENGTH = 32


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.load(tokenizer_lib.BUNDLED_MINILM)


@pytest.fixture(scope='module')
def default_lexicon():
  return entities.load_lexicon()


def _lexicon(tmp_path, *lines):
  path = tmp_path / 'lexicon.txt'
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return entities.load_lexicon(path)


def _encode(tok, text):
  tokens = tok(
    text,
    max_length=MAX_LENGTH,
    padding='max_length',
    truncation=True,
    return_offsets_mapping=True,
    return_special_tokens_mask=True,
  )
  return np.asarray(tokens['offset_mapping']), np.asarray(tokens['special_tokens_mask'], bool)


def _word_positions(tok, text):
  """Token positions of each whitespace-separated word, counted from the word pieces of
  each word alone (after [CLS]): independent of the offsets the module groups by."""
  positions, at = [], 1
  for word in text.split():
    n = len(tok.tokenize(word))
    positions.append(list(range(at, at + n)))
    at += n
  return positions


def _target(ratio, n):
  return math.ceil(Fraction(str(ratio)) * n)


def _spans_text(text, lexicon):
  return [text[a:b] for a, b in entities.entity_spans(text, lexicon)]


def test_mask_is_the_entity_word_pieces_and_a_seeded_whole_word_top_up(tok, tmp_path):
  lexicon = _lexicon(tmp_path, 'pneumothorax', 'pleural effusion')
  assert len(tok.tokenize('pneumothorax')) > 1  # the entity spans several word pieces
  text = 'the film shows a small pneumothorax with some quiet words around it'
  offsets, special = _encode(tok, text)
  ratio, seed = 0.5, 7
  mask, entity = entities.plan_entity_mask(
    offsets, special, entities.entity_spans(text, lexicon), ratio, rng=np.random.default_rng(seed)
  )

  words = _word_positions(tok, text)
  entity_word = text.split().index('pneumothorax')
  expected_entity = np.zeros(MAX_LENGTH, bool)
  expected_entity[words[entity_word]] = True
  np.testing.assert_array_equal(entity, expected_entity)

  n_real = sum(len(w) for w in words)
  target = _target(ratio, n_real)
  assert len(words[entity_word]) < target  # so the top-up is needed
  expected = expected_entity.copy()
  free = [w for i, w in enumerate(words) if i != entity_word]
  for i in np.random.default_rng(seed).permutation(len(free)):
    expected[free[i]] = True
    if expected.sum() >= target:
      last = free[i]
      break
  np.testing.assert_array_equal(mask, expected)
  assert mask.sum() >= target > mask.sum() - len(last)  # stops at the first word reaching it
  assert not mask[special].any()


@pytest.mark.parametrize('seed', range(5))
def test_a_caption_without_entities_gets_whole_random_words_only(tok, tmp_path, seed):
  lexicon = _lexicon(tmp_path, 'pneumothorax')
  text = 'nothing here matches, though cardiomegaly splits into several pieces'
  offsets, special = _encode(tok, text)
  mask, entity = entities.plan_entity_mask(
    offsets, special, entities.entity_spans(text, lexicon), 0.3, rng=np.random.default_rng(seed)
  )
  words = _word_positions(tok, text)
  assert not entity.any()
  assert not mask[special].any()  # [CLS], [SEP] and padding
  for word in words:
    assert mask[word].all() or not mask[word].any(), word
  assert mask.sum() >= _target(0.3, sum(len(w) for w in words))


def test_a_caption_of_entities_only_is_masked_fully_beyond_the_target(tok, default_lexicon):
  text = 'Left pleural effusion, pneumothorax, cardiomegaly'
  offsets, special = _encode(tok, text)
  real = ~special
  spans = entities.entity_spans(text, default_lexicon)
  # Every token but the commas, which belong to no entity.
  pieces = tok.convert_ids_to_tokens(tok(text)['input_ids'])
  commas = np.array([p == ',' for p in pieces] + [False] * (MAX_LENGTH - len(pieces)))
  for ratio in (0.0, 0.15):
    mask, entity = entities.plan_entity_mask(
      offsets, special, spans, ratio, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(entity, real & ~commas)
    np.testing.assert_array_equal(mask, entity)


def test_matching_is_longest_first_case_insensitive_and_on_whole_words(default_lexicon):
  text = 'PLEURAL  Effusion; a Massive mass on X-ray, xray and ray-tracing; effusion'
  assert _spans_text(text, default_lexicon) == [
    'PLEURAL  Effusion',
    'mass',
    'X-ray',
    'xray',
    'effusion',
  ]


def test_a_hyphen_is_part_of_a_word(tmp_path):
  lexicon = _lexicon(tmp_path, 'x-ray', 'ray', 'contrast')
  text = 'x-ray, ray, non-contrast, contrast-enhanced, contrast'
  assert _spans_text(text, lexicon) == ['x-ray', 'ray', 'contrast']
  spans = entities.entity_spans(text, lexicon)
  assert spans == sorted(spans)


def test_entity_mask_returns_masked_ids_and_labels(tok, default_lexicon):
  text = 'Frontal chest radiograph: small right pneumothorax, no other finding.'
  reference = tok(text, max_length=MAX_LENGTH, padding='max_length', truncation=True)
  input_ids, attention_mask, masked_ids, labels, n_entity = entities.entity_mask(
    tok, text, MAX_LENGTH, default_lexicon, rng=np.random.default_rng(3)
  )
  for array in (input_ids, attention_mask, masked_ids, labels):
    assert array.dtype == np.int32 and array.shape == (MAX_LENGTH,)
  np.testing.assert_array_equal(input_ids, reference['input_ids'])
  np.testing.assert_array_equal(attention_mask, reference['attention_mask'])
  masked = labels != -1
  assert masked.any() and not masked[attention_mask == 0].any()
  np.testing.assert_array_equal(labels[masked], input_ids[masked])
  assert (masked_ids[masked] == tok.mask_token_id).all()
  np.testing.assert_array_equal(masked_ids[~masked], input_ids[~masked])
  named = ('frontal', 'chest', 'radiograph', 'right', 'pneumothorax')
  assert n_entity == sum(len(tok.tokenize(word)) for word in named)


def test_mask_tokens_labels_only_the_masked_positions():
  ids = np.array([101, 7, 8, 9, 102, 0])
  mask = np.array([False, True, False, True, False, False])
  masked_ids, labels = entities.mask_tokens(ids, mask, 103)
  np.testing.assert_array_equal(masked_ids, [101, 103, 8, 103, 102, 0])
  np.testing.assert_array_equal(labels, [-1, 7, -1, 9, -1, -1])
  assert masked_ids.dtype == labels.dtype == np.int32


def test_a_user_lexicon_replaces_the_default(tmp_path, default_lexicon):
  text = 'A widget in the chest'
  lexicon = _lexicon(tmp_path, '# my own entities', 'Widget  # a comment')
  assert lexicon.phrases == ('widget',)
  assert _spans_text(text, lexicon) == ['widget']
  assert _spans_text(text, default_lexicon) == ['chest']


@pytest.mark.parametrize('content', [None, '', '# only a comment\n\n'])
def test_a_missing_or_empty_lexicon_is_a_one_paragraph_user_error(tmp_path, content):
  path = tmp_path / 'lexicon.txt'
  if content is not None:
    path.write_text(content, encoding='utf-8')
  with pytest.raises(UserError) as error:
    entities.load_lexicon(path)
  message = str(error.value)
  assert str(path) in message and 'one medical entity per line' in message
  assert '\n' not in message


def test_a_slow_tokenizer_is_a_user_error(default_lexicon):
  class Slow:
    is_fast = False

  with pytest.raises(UserError, match='fast'):
    entities.entity_mask(Slow(), 'chest', 8, default_lexicon, rng=np.random.default_rng(0))


def test_the_default_lexicon_covers_every_synthetic_label_word(default_lexicon):
  for label, values in synthetic_labels.WORDS.items():
    for value, synonyms in values.items():
      for phrase in synonyms:
        covered = np.zeros(len(phrase), bool)
        for start, end in entities.entity_spans(phrase, default_lexicon):
          covered[start:end] = True
        letters = np.array([c != ' ' for c in phrase])
        assert covered[letters].all(), (label, value, phrase)
