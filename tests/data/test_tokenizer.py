"""Tests of medclip_jax.data.tokenizer: the bundled vocabulary and a missing tokenizer."""

import pytest

from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError


def test_bundled_tokenizer_maps_ordinary_words_to_real_ids():
  tok = tokenizer_lib.load(tokenizer_lib.BUNDLED_MINILM)
  ids = tok(
    'axial ct of the brain showing a mass in the left frontal lobe', add_special_tokens=False
  )['input_ids']
  assert tok.unk_token_id not in ids
  assert tok.convert_ids_to_tokens(ids)[:3] == ['axial', 'ct', 'of']


def test_missing_tokenizer_directory_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='No tokenizer found'):
    tokenizer_lib.load(str(tmp_path))
