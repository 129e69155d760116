"""`pubmedvision`: PubMedVision VQA JSON (or JSONL), optionally a seeded sample of it.

Reads a list of objects like PubMedVision_Alignment_VQA.json::

    {"id": "Alignment_VQA_0", "image": ["images/pmc_9_0.jpg", ...],
     "conversations": [{"from": "human", "value": "<image>\\n..."},
                       {"from": "gpt", "value": "The CT scan shows ..."}],
     "modality": "Computed Tomography", "body_part": "Chest"}

with image paths relative to the JSON's directory or to its images/ folder
(absolute ones are used as is). Rules:

- Caption: the first 'gpt' turn, without image placeholders (`<image>`,
  `<image_1>`), bold markers (`**`), heading marks (`#`) and list bullets at
  the start of a line; whitespace is collapsed as for every format.
- Labels: `modality` and `body_part`, as cleaned text, where present.
- Multi-image records: only the first image is kept. The answer describes
  all the images together, so a pair per image would give k identical
  captions that InfoNCE treats as each other's negatives whenever they share
  a batch, while each image matches only part of the caption; one pair per
  record also keeps --sample=N at N pairs. The images left out are
  counted in dataset_info.json ('extra_images_ignored').
- Skipped, with a reason: an item or line that is not a JSON object, no
  image, an `image` that is not a list, a first image that is not a path,
  no gpt turn; and every image or caption failure (see `base.convert`).
- --sample=N (0 = all): the N source records whose sha256(seed:id) is
  smallest, taken before conversion (bad records in the sample are skipped
  and count against --max_bad_fraction) and kept in file order. The choice
  depends on the ids and the seed, not on the order of the file, and a
  sample contains every smaller sample of the same seed. Asking for more
  than there is takes all (dataset_info.json 'sample': requested, available,
  taken). The file is read as a stream, so sampling the full (>1 GB) JSON
  holds only the sample in memory.
- Splits: hashed by group = the record's image path. PubMedVision ids
  (Alignment_VQA_<n>) do not name the paper, and the same figure can carry
  several records (e.g. the Alignment and InstructionTuning files joined),
  so grouping by image keeps an image out of two splits.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re

from medclip_jax.data import ingest
from medclip_jax.data.formats import base

_NOISE = re.compile(r'<image[^>]*>|\*\*|^[ \t]*(?:#+|[-*])[ \t]+', re.MULTILINE)
_LABELS = ('modality', 'body_part')


def _answer(conversations) -> str | None:
  """The text of the first gpt turn ('' if it is not text), or None if there is none."""
  if not isinstance(conversations, list):
    return None
  for turn in conversations:
    if isinstance(turn, dict) and turn.get('from') == 'gpt':
      value = turn.get('value')
      return _NOISE.sub('', value) if isinstance(value, str) else ''
  return None


def _sample_key(seed: int, record_id: str) -> int:
  digest = hashlib.sha256(f'{seed}:{record_id}'.encode('utf-8', 'surrogateescape')).digest()
  return int.from_bytes(digest, 'big')


def _record_id(row: dict | None, number: int) -> str:
  """A record's id, or its position for records without one (or not objects)."""
  return (base.text(row.get('id')) if row else '') or f'record {number}'


def source(
  input: str | None = None,  # pylint: disable=redefined-builtin
  sample: int = 0,
  seed: int = 0,
  val_fraction: float = 0.05,
  test_fraction: float = 0.1,
  limit: int = 0,
  max_side: int = ingest.DEFAULT_MAX_SIDE,
  max_bad_fraction: float = 0.05,
) -> base.Source:
  """PubMedVision VQA records: first image, first gpt answer, modality and body_part."""
  base.check_real_options(
    'pubmedvision', input, False, val_fraction, test_fraction, limit, max_side, max_bad_fraction
  )
  if sample < 0:
    raise base.OptionError(f'sample must be >= 0 (0 = all), got {sample}.')
  if os.path.splitext(input)[1].lower() not in ('.json', '.jsonl'):
    raise base.OptionError(
      f'format pubmedvision: --input={input!r} must be the .json (or .jsonl) file of '
      'PubMedVision records, e.g. PubMedVision_Alignment_VQA.json.'
    )
  first = next((row for row in base.iter_json(input) if row is not None), {})
  missing = [key for key in ('image', 'conversations') if key not in first]
  if missing:
    raise base.OptionError(
      f'{input!r} is not PubMedVision data: its first record has no '
      f'{" or ".join(map(repr, missing))}; its keys are {", ".join(map(repr, first)) or "none"}. '
      'PubMedVision records have id, image (a list of paths), conversations (human / gpt '
      'turns), modality and body_part.'
    )
  # Streamed: the full PubMedVision JSON is over a gigabyte. A sample keeps
  # only its N records (a heap on the negated hash: the N smallest hashes).
  numbered = enumerate(base.iter_json(input), start=1)
  counts = {'requested': sample, 'available': 0, 'taken': 0}
  if sample:
    heap = []
    for number, row in numbered:
      counts['available'] += 1
      item = (-_sample_key(seed, _record_id(row, number)), number, row)
      if len(heap) < sample:
        heapq.heappush(heap, item)
      elif item > heap[0]:
        heapq.heapreplace(heap, item)
    numbered = sorted(((number, row) for _, number, row in heap), key=lambda pair: pair[0])
  root = os.path.dirname(os.path.abspath(input))
  directories = [root, os.path.join(root, 'images')]

  def entries():
    for number, row in numbered:
      record_id = _record_id(row, number)
      if not sample:
        counts['available'] += 1
      counts['taken'] += 1
      if row is None:
        yield base.Skipped(record_id, 'not a JSON object')
        continue
      images = row.get('image')
      if not images:
        yield base.Skipped(record_id, 'no image')
        continue
      if not isinstance(images, list):
        yield base.Skipped(record_id, 'image is not a list')
        continue
      if not isinstance(images[0], str) or not images[0].strip():
        yield base.Skipped(record_id, 'image is not a path')
        continue
      caption = _answer(row.get('conversations'))
      if caption is None:
        yield base.Skipped(record_id, 'no gpt turn')
        continue
      name = images[0].strip()
      source.info['extra_images_ignored'] += len(images) - 1
      yield base.Entry(
        id=record_id,
        group=base.text(os.path.normpath(name)),
        image=ingest.find_image(name, directories),
        caption=caption,
        labels={k: base.text(row.get(k)) for k in _LABELS if base.text(row.get(k))},
      )

  source = base.grouped_source(
    entries(),
    seed=seed,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    input=input,
    limit=limit,
    max_side=max_side,
    max_bad_fraction=max_bad_fraction,
    # Both filled in while the records are read (prepare reads info after them).
    sample=counts,
    extra_images_ignored=0,
  )
  return source
