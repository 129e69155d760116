"""Entity masking for entity-driven masked language modelling (MMCLIP's EntMLM).

The medical entities of a caption are found with a lexicon (a text file the user
can replace: no NER model is downloaded), every token of every entity is masked,
and where a caption has few entities random whole words top the mask up to a
target share of its tokens. Host-side NumPy, for the input pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError

DEFAULT_LEXICON = Path(__file__).with_name('entity_lexicon.txt')
DEFAULT_RATIO = 0.15

# A hyphen belongs to the word, so 'x-ray' is one word and 'ray' no match inside it.
_BEFORE = r'(?<![\w-])'
_AFTER = r'(?![\w-])'


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Entity phrases (lower case, single-spaced) and the pattern that finds them."""

  path: Path
  phrases: tuple[str, ...]
  pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    # Longest first: the regex takes the first alternative that matches at a
    # position, so 'pleural effusion' wins over 'effusion'.
    ordered = sorted(self.phrases, key=lambda p: (-len(p), p))
    words = (r'\s+'.join(re.escape(w) for w in p.split()) for p in ordered)
    pattern = re.compile(_BEFORE + '(?:' + '|'.join(words) + ')' + _AFTER, re.IGNORECASE)
    object.__setattr__(self, 'pattern', pattern)


def _lexicon_error(path: Path, problem: str) -> UserError:
  return UserError(
    f'The entity lexicon {path} {problem}: it must be a UTF-8 text file with one '
    "medical entity per line, a word or a phrase such as 'pleural effusion' "
    "(matched case-insensitively on whole words; '#' starts a comment). Point the "
    f'lexicon path at such a file, or leave it unset for the default, {DEFAULT_LEXICON}.'
  )


def load_lexicon(path: str | Path | None = None) -> Lexicon:
  """The lexicon in `path` (default: DEFAULT_LEXICON)."""
  path = Path(path) if path is not None else DEFAULT_LEXICON
  try:
    text = path.read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as e:
    raise _lexicon_error(path, f'cannot be read ({e.__class__.__name__})') from e
  phrases = set()
  for line in text.splitlines():
    phrase = ' '.join(line.split('#', 1)[0].lower().split())
    if phrase:
      phrases.add(phrase)
  if not phrases:
    raise _lexicon_error(path, 'holds no entities')
  return Lexicon(path, tuple(sorted(phrases)))


def entity_spans(text: str, lexicon: Lexicon) -> list[tuple[int, int]]:
  """Character spans [start, end) of the entities in `text`: whole words, any case,
  leftmost and then longest match, non-overlapping, in order."""
  return [m.span() for m in lexicon.pattern.finditer(text)]


def word_groups(offsets: np.ndarray, real: np.ndarray) -> list[np.ndarray]:
  """The token indices of each word: real tokens whose offsets touch (a token that
  starts where the previous one ended continues its word, as word pieces do)."""
  groups, current, end = [], [], None
  for i in np.flatnonzero(real):
    start, stop = offsets[i]
    if current and start != end:
      groups.append(np.asarray(current))
      current = []
    current.append(i)
    end = stop
  if current:
    groups.append(np.asarray(current))
  return groups


def plan_entity_mask(
  offsets, special, spans, ratio: float = DEFAULT_RATIO, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Which tokens to mask, and which of them are entity tokens ([T] bool each).

  `offsets` is a fast tokenizer's offset_mapping for one caption ([T, 2]) and
  `special` its special_tokens_mask; neither special nor padding tokens are ever
  masked. Every token overlapping an entity span is masked, even beyond the
  target of ceil(ratio * real tokens): an entity is never half hidden. Below the
  target, whole words without a masked token are added in an order `rng` draws,
  one at a time, until the target is reached or no word is left.
  """
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f'The masking ratio must lie in [0, 1], got {ratio}.')
  offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
  starts, ends = offsets[:, 0], offsets[:, 1]
  real = ~np.asarray(special, bool) & (ends > starts)
  entity = np.zeros(len(offsets), bool)
  for start, end in spans:
    entity |= real & (starts < end) & (ends > start)
  mask = entity.copy()
  # Less a hair, so that 0.1 * 30 = 3.0000000000000004 asks for 3 tokens, not 4.
  target = math.ceil(ratio * int(real.sum()) - 1e-9)
  if mask.sum() < target:
    free = [g for g in word_groups(offsets, real) if not mask[g].any()]
    for w in rng.permutation(len(free)):
      mask[free[w]] = True
      if mask.sum() >= target:
        break
  return mask, entity


def mask_tokens(input_ids, mask, mask_token_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids with the masked tokens replaced by `mask_token_id`, labels: the original
  ids where masked, -1 elsewhere), int32."""
  ids = np.asarray(input_ids, np.int32)
  mask = np.asarray(mask, bool)
  return np.where(mask, np.int32(mask_token_id), ids), np.where(mask, ids, np.int32(-1))


@dataclasses.dataclass(frozen=True)
class EntityMasking:
  """EntMLM's masking of a training caption, for the input pipeline (picklable)."""

  lexicon: Lexicon
  ratio: float = DEFAULT_RATIO

  @classmethod
  def from_config(cls, settings) -> EntityMasking:
    """From config.entmlm: its lexicon ('' for the default) and ratio."""
    return cls(load_lexicon(settings.lexicon or None), float(settings.ratio))

  def __call__(self, tokenizer, text: str, max_length: int, rng) -> dict:
    """The caption's tokens ('input_ids', 'attention_mask', 'truncated': cut off at
    `max_length`) and the columns EntMLM reads: 'mlm_input_ids' (masked), 'mlm_labels'
    (the original id where masked, -1 elsewhere), 'mlm_entities' (entity tokens found),
    from one call of the tokenizer."""
    input_ids, attention_mask, masked_ids, labels, found, truncated = _tokenize_and_mask(
      tokenizer, text, max_length, self.lexicon, self.ratio, rng
    )
    return {
      'input_ids': input_ids,
      'attention_mask': attention_mask,
      'truncated': truncated,
      'mlm_input_ids': masked_ids,
      'mlm_labels': labels,
      'mlm_entities': found,
    }


def entity_mask(
  tokenizer,
  text: str,
  max_length: int,
  lexicon: Lexicon,
  ratio: float = DEFAULT_RATIO,
  *,
  rng: np.random.Generator,
):
  """Tokenizes `text` as the input pipeline does and masks it: (input_ids,
  attention_mask, masked_ids, labels, n_entity_tokens), int32."""
  return _tokenize_and_mask(tokenizer, text, max_length, lexicon, ratio, rng)[:5]


def _tokenize_and_mask(tokenizer, text, max_length, lexicon, ratio, rng):
  """`entity_mask`'s arrays and whether the text was cut off at `max_length`."""
  if not getattr(tokenizer, 'is_fast', False):
    raise UserError(
      f'Entity masking needs a fast (Rust) Hugging Face tokenizer, for the character '
      f'offsets of its tokens; {type(tokenizer).__name__} is a slow one. Point '
      'config.data.tokenizer at a directory with a tokenizer.json.'
    )
  row, truncated = tokenizer_lib.encode(tokenizer, text, max_length, offsets=True)
  mask, entity = plan_entity_mask(
    row['offset_mapping'],
    row['special_tokens_mask'],
    entity_spans(text, lexicon),
    ratio,
    rng=rng,
  )
  input_ids = np.asarray(row['input_ids'], np.int32)
  masked_ids, labels = mask_tokens(input_ids, mask, tokenizer.mask_token_id)
  attention_mask = np.asarray(row['attention_mask'], np.int32)
  return input_ids, attention_mask, masked_ids, labels, np.int32(entity.sum()), np.int32(truncated)
