"""Tests of medclip_jax.data.tokenizer: the bundled vocabulary, a missing one, a bare
vocab.txt, no PyTorch import."""

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


@pytest.mark.parametrize('cased', [False, True])
def test_a_directory_holding_only_a_vocabulary_tokenizes_as_bert(tmp_path, cased):
  # Some released checkpoints ship vocab.txt and nothing else about their tokenizer.
  bundled = (tokenizer_lib.bundled_minilm_dir() / 'vocab.txt').read_text(encoding='utf-8')
  extra = ['CT', 'MRI'] if cased else []
  (tmp_path / 'vocab.txt').write_text(bundled.rstrip('\n') + '\n' + '\n'.join(extra) + '\n')
  tok = tokenizer_lib.load(str(tmp_path))
  ids = tok('CT of the brain', add_special_tokens=False)['input_ids']
  want = ['CT', 'of', 'the', 'brain'] if cased else ['ct', 'of', 'the', 'brain']
  assert tok.convert_ids_to_tokens(ids) == want


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
