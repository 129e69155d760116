"""The grain input pipeline: records -> decoded, augmented, tokenized batches.

Training reads one endless, reshuffled-each-epoch stream per process. Every
global batch is the same set of records whatever the number of processes:
process p of c takes elements p, p+c, p+2c, ... of the shuffled stream, so
together the processes cover consecutive global positions. Images leave the
pipeline as uint8 (4x less host-to-device traffic than float32) and are
normalised on the device by `normalize`.
"""

import collections
import hashlib
import math
import os
import re
import string
from pathlib import Path

import grain
from absl import flags
import jax.numpy as jnp
import numpy as np
from PIL import Image

from medclip_jax.data import images as image_lib
from medclip_jax.data import records
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.data import workers as workers_lib
from medclip_jax.errors import UserError

# Words whose meaning a left-right flip reverses, as radiology writes them: the sides, their
# abbreviations, the lung lobes, and the dextro-/levo- of e.g. dextroscoliosis (not of a
# drug's name, as levothyroxine).
_SIDE_PAIRS = (
  ('left', 'right'),
  ('leftward', 'rightward'),
  ('lt', 'rt'),
  ('lul', 'rul'),
  ('lll', 'rll'),
)
_LATERALITY_SWAP = {a: b for pair in _SIDE_PAIRS for a, b in (pair, pair[::-1])}
_LATERALITY_SWAP.update(dextro='levo', levo='dextro')
_LATERALITY_RE = re.compile(
  r'\b(?:('
  + '|'.join(w for pair in _SIDE_PAIRS for w in pair)
  + r')\b|(dextro|levo)(?=scolio|convex|rota|posit|cardia|version|curv))',
  re.IGNORECASE,
)
# Sides a flip cannot carry over (no left middle lobe; the lingula is left only): an image
# whose caption names one is never flipped.
_ONE_SIDED_RE = re.compile(r'\b(rml|lingula\w*)\b|\bright middle lobe\b', re.IGNORECASE)


def normalize(images, mean, std):
  """uint8 [B, H, W, 3] -> float32 standardised with per-channel mean/std."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  std = jnp.asarray(std, jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std


def swap_laterality(caption: str) -> str:
  """The caption as a left-right flip of its image reads: 'left' <-> 'right' (and leftward,
  Lt/Rt, LUL/RUL, LLL/RLL, dextro-/levo-), keeping each word's case."""

  def swap(match):
    word = match.group(0)
    new = _LATERALITY_SWAP[word.lower()]
    if word.isupper() and len(word) > 1:
      return new.upper()
    return new.capitalize() if word[0].isupper() else new

  return _LATERALITY_RE.sub(swap, caption)


def names_a_side(caption: str) -> bool:
  """Whether `caption` names a side of the body (a flip would change what it says)."""
  return bool(_LATERALITY_RE.search(caption) or _ONE_SIDED_RE.search(caption))


def template_fields(template: str) -> list[str]:
  """The label names in a text template like '{modality} of the {body_part}.'.

  Raises ValueError for a template with no named fields, positional or
  formatted fields, or bad braces.
  """
  try:
    parsed = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f'Bad text template {template!r}: {e}.') from e
  fields = []
  for _, name, spec, conversion in parsed:
    if name is None:
      continue
    if not name.isidentifier() or spec or conversion:
      raise ValueError(
        f'Bad text template {template!r}: write fields as {{label_name}}, e.g. '
        "'{modality} of the {body_part}.'"
      )
    fields.append(name)
  if not fields:
    raise ValueError(f'Text template {template!r} names no label, e.g. {{modality}}.')
  return list(dict.fromkeys(fields))


def describe_train_text(data_config, info: dict) -> str:
  """What training pairs images with, checked against the dataset's labels.

  Raises UserError for a template that is malformed or names a label the
  dataset does not have.
  """
  if data_config.train_text == 'caption':
    return 'training text: captions'
  try:
    fields = template_fields(data_config.train_text)
  except ValueError as e:
    raise UserError(f'config.data.train_text: {e} Or set it to "caption".') from e
  known = info.get('labels', {})
  unknown = [f for f in fields if f not in known]
  if unknown:
    raise UserError(
      f'config.data.train_text={data_config.train_text!r} names label(s) '
      f'{", ".join(unknown)} that {data_config.dir} does not have; its labels are '
      f'{", ".join(sorted(known)) or "(none)"}. Use those, or "caption".'
    )
  split = data_config.train_split
  total = info.get('splits', {}).get(split, {}).get('count', 0)
  counts = info.get('label_counts', {}).get(split)
  if counts is None:
    lacking = 'an unknown number of records (prepared before label counts were recorded)'
  else:
    # A record lacking any one of the labels keeps its caption; per-label
    # counts give the exact number only when at most one label is missing.
    missing = max(total - sum(counts.get(f, {}).values()) for f in fields)
    exact = len(fields) == 1 or missing == 0
    lacking = f'{"" if exact else "at least "}{missing} of {total}'
  return (
    f'training text: {data_config.train_text!r} filled from labels; {lacking} '
    f'{split} records lack a label it names and keep their caption'
  )


def tfds_info(data_config) -> dict:
  """The dataset info of a TFDS-built dataset, or a UserError."""
  try:
    from medclip_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(
      f'config.data.tfds_name={data_config.tfds_name!r} needs tensorflow-datasets: '
      'pip install tensorflow-datasets==4.9.10 (TensorFlow itself is not needed).'
    ) from e
  try:
    return tfds_builders.dataset_info(data_config.tfds_name, data_config.dir or None)
  except Exception as e:  # TFDS raises several types for a dataset it cannot find.
    raise UserError(
      f'No TFDS dataset {data_config.tfds_name!r} found in '
      f'{data_config.dir or "the default TFDS data_dir"} (config.data.dir): {e} Build it with '
      'python -m medclip_jax.data.tfds_builders (see its --help), or unset config.data.tfds_name '
      'to read prepared shards.'
    ) from e


def _no_dataset_message(data_config) -> str:
  """What to do when config.data.dir holds no prepared dataset.

  The config file's own prepare command is suggested only when it writes to
  that directory: for a directory given by the user it would not help.
  """
  where = Path(data_config.dir).absolute() if data_config.dir else None
  command = data_config.prepare_command
  output = re.search(r'--output=(\S+)', command)
  if where is None:
    return (
      'config.data.dir is empty: set it to a directory written by python -m '
      'medclip_jax.data.prepare (e.g. --config.data.dir=data/mine).'
    )
  head = (
    f'No prepared dataset found in {where} (config.data.dir): training reads the ArrayRecord '
    'shards and dataset_info.json that python -m medclip_jax.data.prepare writes.'
  )
  if command and output and Path(output.group(1)).absolute() == where:
    return f'{head} For this config run:\n  {command}\nthen start training again.'
  return (
    f'{head} Check the path, or prepare your data there, e.g. for a CSV of images and '
    f'captions:\n  python -m medclip_jax.data.prepare --format=manifest --input=FILE.csv '
    f'--output={data_config.dir}\n(its --help lists the other formats).'
  )


def dataset_info(data_config) -> dict:
  """The info of the dataset `config.data` names, or a UserError saying how to prepare it."""
  if data_config.tfds_name:
    info = tfds_info(data_config)
  else:
    try:
      info = records.read_dataset_info(data_config.dir)
    except FileNotFoundError as e:
      raise UserError(_no_dataset_message(data_config)) from e
  if info.get('splits', {}).get(data_config.train_split, {}).get('count') == 0:
    raise UserError(
      f'The {data_config.train_split!r} split in {data_config.dir} is empty: nothing to train '
      'on. Check the skipped records in its dataset_info.json.'
    )
  return info


def random_crop(image: Image.Image, size: int, scale, rng) -> np.ndarray:
  """A random square covering `scale` (min, max) of the shorter side's square (of a JPEG
  decoded reduced, the same share of the image and the same place, to within a pixel)."""
  side = min(image.width, image.height) * np.sqrt(rng.uniform(*scale))
  left = rng.uniform(0, image.width - side)
  top = rng.uniform(0, image.height - side)
  return image_lib.square_resize(image, (left, top, left + side, top + side), size)


class Preprocess:
  """Turns one serialised record into model inputs (picklable for workers)."""

  def __init__(
    self, data_config, label_vocabs=None, train=False, entity_masking=None, unpaired=False
  ):
    # Training may pair images with label text instead of captions;
    # evaluation always uses the captions.
    self.template = None
    if train and data_config.train_text != 'caption':
      self.template = data_config.train_text
      self.template_fields = template_fields(self.template)
    self.image_size = data_config.image_size
    self.max_length = data_config.max_text_length
    self.tokenizer_spec = data_config.tokenizer
    self.crop_scale = tuple(data_config.crop_scale)
    # The smallest random crop spans sqrt(min area) of the shorter side: a JPEG is
    # decoded reduced only as far as that crop keeps image_size pixels.
    low = min(self.crop_scale)
    self.min_decoded_side = math.ceil(self.image_size / math.sqrt(low)) if low > 0 else None
    self.hflip_prob = data_config.hflip_prob
    self.laterality = data_config.laterality
    if self.laterality not in ('swap', 'skip'):
      raise ValueError(f"config.data.laterality must be 'swap' or 'skip', got {self.laterality!r}.")
    self.label_vocabs = {
      k: {name: i for i, name in enumerate(v)} for k, v in (label_vocabs or {}).items()
    }
    self.train = train
    # EntMLM's masked caption (entities.EntityMasking), for training only.
    self.entity_masking = entity_masking if train else None
    # Unpaired data mixed in: every example says what it has ('has_image', 'kind'), and
    # an image-only record is paired with the disease-kind prompt.
    self.unpaired = unpaired
    self.prompt = data_config.unpaired.prompt if unpaired else None
    self.blank = np.round(np.asarray(data_config.get('mean', (0.0,) * 3)) * 255).astype(np.uint8)
    # Loaded now, not on first use: reader threads would race to import it.
    self.tokenizer = tokenizer_lib.load(self.tokenizer_spec)

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['tokenizer']  # each worker process loads its own copy
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.tokenizer = tokenizer_lib.load(self.tokenizer_spec)

  def _flip(self, image, caption, rng):
    if self.hflip_prob <= 0 or rng.uniform() >= self.hflip_prob:
      return image, caption
    if names_a_side(caption):
      if self.laterality == 'skip' or _ONE_SIDED_RE.search(caption):
        return image, caption
      caption = swap_laterality(caption)
    return image[:, ::-1], caption

  def text(self, record: dict, rng: np.random.Generator | None = None, template=True) -> str:
    """The caption, or (unless `template` is False) the template filled from the record's
    labels if it has them all.

    Of an image's several captions, training (given `rng`) draws one each time the
    image is read; evaluation takes the first.
    """
    if template and self.template and all(f in record['labels'] for f in self.template_fields):
      return self.template.format(**record['labels'])
    several = records.captions(record)
    if rng is not None and len(several) > 1:
      return several[int(rng.integers(len(several)))]
    return several[0]

  def tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Token ids and mask, padded to max_length, and whether text was cut off."""
    tokens, truncated = tokenizer_lib.encode(self.tokenizer, text, self.max_length)
    ids, mask = tokens['input_ids'], tokens['attention_mask']
    return np.asarray(ids, np.int32), np.asarray(mask, np.int32), truncated

  def __call__(self, raw: bytes, rng: np.random.Generator | None = None):
    record = records.decode(raw)
    kind = record.get('kind')
    if kind == 'image_only':
      caption = fill_prompt(self.prompt, record['labels'])
    else:
      # A text-only record's report is all it has: never a label template.
      caption = self.text(record, rng if self.train else None, kind != 'text_only')
    if kind == 'text_only':
      # No image: a blank one at the mean (0 once normalised, as AttMIM's blanked patches)
      # keeps the batch's shape; the objectives leave it out.
      pixels = np.broadcast_to(self.blank, (self.image_size, self.image_size, 3))
    elif self.train:
      image = image_lib.decode_reduced(record['image'], self.min_decoded_side)
      pixels = random_crop(image, self.image_size, self.crop_scale, rng)
      pixels, caption = self._flip(pixels, caption, rng)
    else:
      # In full, as inference reads an image (images.model_input).
      pixels = image_lib.center_crop(image_lib.decode(record['image']), self.image_size)
    example = {'image': np.ascontiguousarray(pixels)}
    if self.entity_masking is not None:
      # The caption's tokens and EntMLM's masked copy of them, from one tokenizer call.
      example.update(self.entity_masking(self.tokenizer, caption, self.max_length, rng))
    else:
      input_ids, attention_mask, truncated = self.tokenize(caption)
      example.update(input_ids=input_ids, attention_mask=attention_mask)
      # Counted by the trainer: texts longer than the text tower takes.
      example['truncated'] = np.int32(truncated)
    if self.unpaired:
      example['has_image'] = np.int32(kind != 'text_only')
      example['kind'] = np.int32(KINDS.index(kind or 'paired'))
    for field, vocab in self.label_vocabs.items():
      example[f'label/{field}'] = np.int32(vocab.get(record['labels'].get(field), -1))
    return example


# Training examples' 'kind' column: the index of the record's kind here.
KINDS = ('paired', *records.UNPAIRED_KINDS)
# config.data.unpaired's defaults (configs/default.py documents them): none mixed in.
UNPAIRED_DEFAULTS = {'image_only': 0.0, 'text_only': 0.0, 'prompt': 'An image showing {finding}.'}


def fill_prompt(template: str, labels: dict) -> str:
  """The disease-kind prompt of an image-only record: `template` filled from its labels,
  a label it lacks left out (and the spaces around it collapsed)."""
  filled = template.format_map(collections.defaultdict(str, labels))
  return ' '.join(filled.split())


def unpaired_shares(data_config) -> dict[str, float]:
  """{kind: share of the training stream} of the unpaired data config.data.unpaired mixes
  in ({} when none): 'image_only' and 'text_only' records of the training split."""
  settings = data_config.get('unpaired')  # configs saved before it existed have none
  if not settings:
    return {}
  return {kind: float(settings[kind]) for kind in KINDS[1:] if float(settings[kind]) > 0}


def training_data(data_config, info: dict) -> dict:
  """What a checkpoint's data position indexes into, from the dataset's info: 'splits'
  ({split: {'count', 'captions', 'files'}} of the splits training reads), 'max_side' (the
  longest side its images were stored at, which a model's inputs are read at too) and
  'vocabulary' (the tokenizer's digest). Saved with each checkpoint, so that a resume on
  other data (prepared anew in the same directory with other counts, or another tokenizer)
  is refused, and a model reads its inputs as it trained even where its data is gone. Where
  the data and the tokenizer live is not part of it: the same may be staged elsewhere."""
  splits = [data_config.train_split]
  splits += [
    records.unpaired_split(data_config.train_split, k) for k in unpaired_shares(data_config)
  ]
  entries = info.get('splits', {})
  return {
    'splits': {
      split: {k: entries.get(split, {}).get(k) for k in ('count', 'captions', 'files')}
      for split in splits
    },
    'max_side': image_lib.max_side_of(info),
    'vocabulary': tokenizer_lib.vocabulary_digest(tokenizer_lib.load(data_config.tokenizer)),
  }


def describe_unpaired(data_config, info: dict) -> str:
  """The training mix, checked against the dataset ('' without unpaired data).

  Raises UserError for a kind the dataset has no records of, or a prompt that is
  malformed or names no label its image-only records have. Says how many of them lack a
  label the prompt names (it is left out of theirs).
  """
  settings, shares = data_config.get('unpaired'), unpaired_shares(data_config)
  if not shares:  # their values are checked with the config (training/checks.py)
    return ''
  split, counts = data_config.train_split, info.get('splits', {})
  for kind in shares:
    if not counts.get(records.unpaired_split(split, kind), {}).get('count'):
      raise UserError(
        f'config.data.unpaired.{kind}={shares[kind]}, but {data_config.dir} holds no '
        f'{kind} records ({records.unpaired_split(split, kind)}). Prepare them with '
        "prepare's --unpaired (manifest: rows lacking a caption or an image) or "
        '--unpaired_images / --unpaired_texts (synthetic), or set the share to 0.'
      )
  if 'image_only' in shares:
    try:
      fields = template_fields(settings.prompt)
    except ValueError as e:
      raise UserError(f'config.data.unpaired.prompt: {e}') from e
    image_only = records.unpaired_split(split, 'image_only')
    labelled = info.get('label_counts', {}).get(image_only, {})
    have = {f: sum(labelled.get(f, {}).values()) for f in fields}
    if not any(have.values()):
      raise UserError(
        f'config.data.unpaired.prompt={settings.prompt!r} names no label the image-only '
        f'records of {data_config.dir} have (their labels: '
        f'{", ".join(sorted(labelled)) or "none"}): each would get the same empty prompt. '
        'Name their labels, e.g. {' + (sorted(labelled) or ['finding'])[0] + '}.'
      )
    total = counts[image_only]['count']
    lacking = max(total - n for n in have.values())
    prompt = f'paired with {settings.prompt!r}'
    if lacking:
      prompt += f'; at least {lacking} of {total} lack a label it names, left out of theirs'
  paired = 1.0 - sum(shares.values())
  mix = ', '.join(f'{share:.0%} {kind.replace("_", "-")}' for kind, share in shares.items())
  return f'training mix: {paired:.0%} paired, {mix}' + (
    f' (image-only records {prompt})' if 'image_only' in shares else ''
  )


def source(data_config, split: str):
  """The serialised records of `split` (random access): prepared shards, or a dataset built by TFDS."""
  if data_config.tfds_name:
    # Only runs on TFDS data need tensorflow-datasets installed.
    from medclip_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel

    return tfds_builders.RecordSource(data_config.tfds_name, split, data_config.dir or None)
  return grain.sources.ArrayRecordDataSource(records.split_files(data_config.dir, split))


def _read_options(data_config, workers: int = 0):
  # With workers, each buffers its share of the process's `prefetch` batches.
  prefetch = math.ceil(data_config.prefetch / workers) if workers else data_config.prefetch
  return grain.ReadOptions(num_threads=data_config.num_threads, prefetch_buffer_size=prefetch)


# More workers than this cost start-up time and memory (a tokenizer and buffers each)
# for little: a batch is rarely wanted faster.
_MAX_AUTO_WORKERS = 16


def available_cores(cpu_max: str = '/sys/fs/cgroup/cpu.max') -> int:
  """The CPU cores this process may run on: its CPU affinity (where the OS keeps one), at
  most its container's CPU quota (cgroup v2's `cpu.max`, as `docker --cpus` and Kubernetes'
  CPU limits set it), rounded up."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # macOS
    cores = os.cpu_count() or 1
  try:
    quota, period = Path(cpu_max).read_text().split()[:2]
    if quota != 'max':
      cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
  except (OSError, ValueError):  # no cgroup v2 here, or a line it cannot parse
    pass
  return cores


def worker_count(workers: int, cores: int | None = None) -> int:
  """The grain worker processes `config.data.workers` asks for: the number itself, or for -1
  ('auto') one fewer than the process's cores (`cores`, else `available_cores()`), at most
  16, where it has more than 2, else 0 (reader threads in this process only)."""
  if workers == -1:
    cores = available_cores() if cores is None else cores
    return min(cores - 1, _MAX_AUTO_WORKERS) if cores > 2 else 0
  if workers < 0:
    raise UserError(
      f'config.data.workers={workers} is not a number of worker processes: set it to 0 '
      '(reader threads in the training process only), a positive number, or -1 (auto: one '
      'per core but one, at most 16, none on 2 cores or fewer).'
    )
  return workers


def _batch_index(state: dict) -> int:
  """The batches delivered before a saved iterator `state`: its 'next_index', or in grain's
  multiprocess state (saved by earlier versions with workers) the sum of the workers'."""
  if 'next_index' in state:
    return int(state['next_index'])
  return sum(int(worker['next_index']) for worker in state['iterators_in_use_states'])


class _Batches(grain.DatasetIterator):
  """`batches` read in this process or by `workers` worker processes, positioned by the
  batch index alone: {'next_index': batches delivered}, whatever the number of workers.

  grain's own multiprocess state holds each worker's position, which only the same
  worker count restores; config.data.workers ('auto' on another machine) may change
  when a run resumes. Reading starts with the first batch asked for, from the position
  set last.

  With `text_features`, each batch's rows of them are taken here, by the 'record' column
  the examples carry: worker processes never hold a copy of the array (4.9 GB for BERT-base
  features of 1.6 million captions).
  """

  def __init__(self, batches: grain.MapDataset, read_options, workers: int, text_features=None):
    super().__init__()
    self._batches, self._read_options, self._workers = batches, read_options, workers
    self._text_features = text_features
    self._next_index = 0
    self._iterator = None

  def _running(self):
    if self._iterator is None:
      ds = self._batches[self._next_index :].to_iter_dataset(self._read_options)
      if self._workers:
        if not flags.FLAGS.is_parsed():
          # grain's workers read its absl flags: outside an absl app (pytest, a
          # notebook) they keep their defaults.
          flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._workers), worker_init_fn=workers_lib.init
        )
      self._iterator = iter(ds)
    return self._iterator

  def _stop(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def __next__(self):
    self._assert_not_closed()
    batch = next(self._running())
    self._next_index += 1
    if self._text_features is not None:
      # Past the first epoch the record index runs on; the source wraps it the same way.
      rows = np.asarray(batch.pop('record')) % len(self._text_features)
      batch['text_features'] = self._text_features[rows]
    return batch

  def get_state(self) -> dict:
    return {'next_index': self._next_index}

  def set_state(self, state: dict) -> None:
    self._stop()
    self._next_index = _batch_index(state)

  def start_prefetch(self) -> None:
    self._running().start_prefetch()

  def close(self) -> None:
    self._stop()
    super().close()


class _Indexed:
  """Preprocess of (record index, record); with `record`, the example keeps the index (for
  a locked text tower's precomputed features, see `_Batches`)."""

  def __init__(self, preprocess: Preprocess, record: bool):
    self.preprocess, self.record = preprocess, record

  def __call__(self, item, rng):
    index, raw = item
    example = self.preprocess(raw, rng)
    if self.record:
      example['record'] = np.int64(index)
    return example


def _with_index(index, raw):
  return index, raw


def train_texts(data_config) -> list[str]:
  """The text training pairs each record of the training split with, in split order (the
  caption, or the label template filled in); for records with one caption and no flips."""
  preprocess = Preprocess(data_config, train=True)
  records_ = source(data_config, data_config.train_split)
  return [preprocess.text(records.decode(records_[i])) for i in range(len(records_))]


def train_iterator(
  data_config,
  *,
  seed: int,
  local_batch_size: int,
  process_index: int,
  process_count: int,
  text_features: np.ndarray | None = None,
  entity_masking=None,
  paired_only: bool = False,
):
  """An endless, checkpointable iterator of this process's training batches, made by
  `worker_count(config.data.workers)` worker processes where that is not 0; its position
  is the batch index either way, so a checkpoint resumes with any number of workers.

  With `text_features` ([records of the split, D], in split order) each batch also
  holds its records' rows of them as 'text_features'; with `entity_masking`
  (`entities.EntityMasking`) its caption masked for EntMLM ('mlm_input_ids',
  'mlm_labels', 'mlm_entities'). With `config.data.unpaired` shares, image-only and
  text-only records are mixed in at those shares (unless `paired_only`) and every
  example says what it has ('has_image', 'kind': an index into KINDS).
  """
  shares = unpaired_shares(data_config)
  preprocess = _Indexed(
    Preprocess(
      data_config,
      train=True,
      # The paired-only stream feeds precise-BN, which reads the images alone.
      entity_masking=None if paired_only else entity_masking,
      unpaired=bool(shares),
    ),
    record=text_features is not None,
  )

  def stream(split, stream_seed):
    return (
      # The record's index always travels with it (not only with text features), so
      # that augmentation draws the same numbers either way.
      grain.MapDataset.source(source(data_config, split))
      .map_with_index(_with_index)
      .seed(stream_seed)
      .shuffle()
      .repeat()
      # Augment before slicing: an element's crop depends on its global
      # position only, not on how many processes share the stream.
      .random_map(preprocess)
    )

  ds = stream(data_config.train_split, seed)
  if shares and not paired_only:
    kinds = list(shares)
    parts = [ds] + [
      stream(records.unpaired_split(data_config.train_split, kind), seed + 1 + i)
      for i, kind in enumerate(kinds)
    ]
    # grain interleaves the streams in these proportions, deterministically.
    ds = grain.MapDataset.mix(parts, [1.0 - sum(shares.values()), *shares.values()])
  # Process p takes rows [p * local, (p + 1) * local) of each global batch, so the global
  # batch is the stream's next rows in order whatever the process count (a row's dropout
  # mask and gradient-cache chunk follow its place in the global batch).
  ds = ds.batch(local_batch_size, drop_remainder=True)[process_index::process_count]
  workers = worker_count(data_config.workers)
  return _Batches(ds, _read_options(data_config, workers), workers, text_features)


def eval_batches(
  data_config,
  split: str,
  *,
  global_batch_size: int,
  process_index: int,
  process_count: int,
  label_vocabs,
):
  """Every record of `split` once, in batches padded to a fixed size.

  Yields this process's rows of each global batch; 'index' is the record's
  position in the split, and padding rows have 'mask' == 0. The number of
  global batches is the same on every process.
  """
  records_ = source(data_config, split)
  preprocess = Preprocess(data_config, label_vocabs=label_vocabs, train=False)
  n = len(records_)
  if n == 0:
    raise UserError(
      f'The {split!r} split in {data_config.dir} has no records to evaluate on; '
      'set config.eval.split to a split that has some.'
    )
  padded = -(-n // global_batch_size) * global_batch_size
  pad_example = None

  def load(index):
    nonlocal pad_example
    if index < n:
      return {**preprocess(records_[index]), 'index': np.int32(index), 'mask': np.int32(1)}
    if pad_example is None:
      pad_example = {k: np.zeros_like(v) for k, v in preprocess(records_[0]).items()}
      pad_example.update(index=np.int32(0), mask=np.int32(0))
    return pad_example

  ds = (
    grain.MapDataset.range(process_index, padded, process_count)
    .map(load)
    .batch(global_batch_size // process_count)
    .to_iter_dataset(_read_options(data_config))
  )
  yield from ds


def split_metadata(data_config, split: str) -> dict[str, list]:
  """Every record of `split` without its pixels, in split order: 'id', 'group',
  'caption' (the first), 'captions' (all of the record's), 'labels' (dicts) and
  'image_key' (a digest of the image bytes, equal for records that show the
  same image)."""
  out = {'id': [], 'group': [], 'caption': [], 'captions': [], 'labels': [], 'image_key': []}
  records_ = source(data_config, split)
  for index in range(len(records_)):
    record = records.decode(records_[index])
    for key in ('id', 'group', 'caption', 'labels'):
      out[key].append(record[key])
    out['captions'].append(records.captions(record))
    out['image_key'].append(hashlib.sha1(record['image']).hexdigest())
  return out
