"""Tests of medclip_jax.data.tokenizer: the bundled vocabulary, a missing one, no PyTorch import."""

import importlib.util
import subprocess
import sys

import pytest

from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from tests import helpers


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


def test_loading_a_tokenizer_leaves_pytorch_unimported():
  # Every process that tokenizes loads one, grain's workers included: with PyTorch
  # installed (as here), AutoTokenizer would import it, about 280 MB a process.
  code = (
    'import sys\n'
    'from medclip_jax.data import tokenizer\n'
    'tok = tokenizer.load(tokenizer.BUNDLED_MINILM)\n'
    'print(type(tok).__name__, tok.is_fast, "torch" in sys.modules)\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=helpers.REPO
  )
  assert importlib.util.find_spec('torch') is not None  # the test venv has it to import
  assert result.stdout.split()[-3:] == ['BertTokenizer', 'True', 'False'], result.stdout
