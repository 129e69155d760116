"""Use a trained model: embed images and texts, classify zero-shot, caption by retrieval, search.

  import medclip_jax
  model = medclip_jax.MedCLIP.load('runs/demo')        # a workdir (step=N) or an export
  image_emb, text_emb = model.encode('scan.png', 'Axial CT of the brain.')
  model.zero_shot('scan.png', ['CT', 'MRI', 'X-ray'], templates=['{} of the brain.'])
  model.caption(['a.png', 'b.dcm'], bank=['caption one', ...], top_k=5)
  index = model.index(['a.png', 'b.png'])             # or python -m medclip_jax.predict embed
  model.search('MRI of the brain', index, top_k=5)

Images are file paths (PNG, JPEG, or DICOM read by the dicom format's rules),
PIL images or arrays, one or a list; they are read, cropped and normalised
exactly as evaluation reads a prepared record (`data/images.py`), and texts
are tokenised as in training. Work is batched, with compiled functions reused
across calls (batch sizes are rounded up to a power of two, so a few compile).
Only the model's parameters are loaded, onto every local device. The
PyTorch export class (`medclip_jax.torch_model.MedCLIP`) has the same methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import string
from concurrent import futures
from pathlib import Path

import numpy as np

from medclip_jax.data import caption_bank
from medclip_jax.data import images as image_lib
from medclip_jax.data import ingest
from medclip_jax.errors import UserError

# Runs a PyTorch model's image batches while the next batch is read.
_AHEAD = futures.ThreadPoolExecutor(1, thread_name_prefix='medclip-embed')
# Threads reading a batch's images (PIL and pydicom release the GIL) where cores are to
# spare; on 2 cores, reader threads beside the encoder's own measured slower than reading
# in the calling thread (BENCHMARKS.md), so there are none.
READ_THREADS = min(8, (os.cpu_count() or 1) - 1) if (os.cpu_count() or 1) > 2 else 0
# Images or texts per batch of the JAX class (up to a power of two times the device count):
# bulk embedding on 2 CPU cores measured 5% faster at 128 than at 64 (BENCHMARKS.md).
BATCH_SIZE = 128
INDEX_FILES = {'embeddings': 'embeddings.npy', 'items': 'items.jsonl', 'meta': 'index.json'}


# Marks digests that cover the towers too; an index without it predates them.
FINGERPRINT_VERSION = 'v2-'


def fingerprint(
  image_projection: np.ndarray, text_projection: np.ndarray, logit_scale, towers: dict
) -> str:
  """A short digest of a model: its heads ([in, out] kernels) and the first values of each
  tensor of its towers (`towers`: their PyTorch state dicts, 'image.'/'text.' prefixed, as
  the export holds them; floating tensors only), so that a model fine-tuned with frozen
  heads differs too. Equal for a workdir, its export and the PyTorch class."""
  digest = hashlib.sha256()
  for array in (image_projection, text_projection, np.asarray(logit_scale).reshape(1)):
    array = np.ascontiguousarray(array, np.float32)
    digest.update(str(array.shape).encode() + array.tobytes())
  for name in sorted(towers):
    array = np.asarray(towers[name])
    digest.update(f'{name}{array.shape}'.encode() + np.float32(array.flat[:16]).tobytes())
  return FINGERPRINT_VERSION + digest.hexdigest()[:16]


def as_list(items) -> tuple[list, bool]:
  """(items as a list, whether a single item was given). A list, a tuple or a 1-D array
  (or pandas Series) of strings or objects (paths, texts, images) holds several; anything
  else (a path, a text, a PIL image, an image array) is one."""
  if _is_string_vector(items):
    return items.tolist(), False
  if isinstance(items, (list, tuple)):
    return list(items), False
  return [items], True


def _is_string_vector(items) -> bool:
  dtype = getattr(items, 'dtype', None)
  return dtype is not None and dtype.kind in ('U', 'S', 'O') and getattr(items, 'ndim', 0) == 1


def _names(items) -> list:
  """`items` (a list, tuple, 1-D array or Series; None for none) as a list."""
  if items is None:
    return []
  return items.tolist() if _is_string_vector(items) else list(items)


def read_image(image, size: int, max_side: int) -> np.ndarray:
  """uint8 [size, size, 3] of one image, or a UserError naming it and what is wrong."""
  try:
    return image_lib.model_input(image, size, max_side)
  except ingest.BadRecord as e:
    what = image if isinstance(image, (str, Path)) else f'the {type(image).__name__} given'
    raise UserError(
      f'Cannot read the image {what}: {e.reason}. Give a PNG, JPEG or DICOM file, a PIL image '
      'or an array.'
    ) from e


def _is_image_file(path: Path) -> bool:
  if path.suffix.lower() in ('.png', '.jpg', '.jpeg', '.dcm', '.dicom'):
    return True
  # PACS exports name DICOM files without a suffix (IM0001); their DICOMDIR index is no image.
  return not path.suffix and path.name != 'DICOMDIR' and image_lib.is_dicom(path)


def image_files(directory) -> list[Path]:
  """The image files below `directory` (PNG, JPEG, DICOM: by suffix, or without one by the
  DICOM mark), sorted; a UserError if none."""
  directory = Path(directory)
  if not directory.is_dir():
    raise UserError(f'No directory {directory} to read images from.')
  files = sorted(p for p in directory.rglob('*') if p.is_file() and _is_image_file(p))
  if not files:
    raise UserError(f'{directory} holds no PNG, JPEG or DICOM files.')
  return files


def read_bank(bank) -> list[str]:
  """Captions, each once (a report bank repeats its commonest sentences, which would fill the
  top k): a list of strings, or a .txt (one a line) / .csv ('caption' column) file."""
  if isinstance(bank, (str, Path)):
    texts = caption_bank.read_bank_file(bank)
  else:
    texts = [str(t).strip() for t in bank if str(t).strip()]
  if not texts:
    raise UserError('The caption bank is empty: give it at least one caption.')
  return list(dict.fromkeys(texts))


def check_templates(templates) -> list[str]:
  """The zero-shot `templates` (default: the class name itself), or a UserError for one that
  does not hold exactly one '{}', where `zero_shot` puts each class name."""
  templates = [templates] if isinstance(templates, str) else _names(templates)
  templates = templates or ['{}']
  for template in templates:
    try:
      names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:  # a lone brace
      names = None
    if names != ['']:
      raise UserError(
        f"The zero-shot template {template!r} must hold '{{}}' once, where each class name "
        "goes, and no other placeholder (e.g. '{} of the brain.'; write a literal brace as "
        "'{{' or '}}')."
      )
  return templates


def check_classes(class_names) -> list[str]:
  """The zero-shot class names as a list, or a UserError for none, a blank or a repeated one
  (its probability would be split between its copies), or one string given for a list."""
  if isinstance(class_names, str):
    raise UserError(
      f'zero_shot takes a list of class names, not one string ({class_names!r}): e.g. '
      "['CT', 'MRI']."
    )
  class_names = _names(class_names)
  if not class_names:
    raise UserError('zero_shot needs at least one class name.')
  if any(not str(c).strip() for c in class_names):
    raise UserError(f'The class names {class_names} hold a blank one (a trailing comma?).')
  repeated = sorted({c for c in class_names if class_names.count(c) > 1})
  if repeated:
    raise UserError(
      f'The class names repeat {", ".join(map(repr, repeated))}: give each class once (a '
      'repeated class would share its probability between its copies).'
    )
  return class_names


def check_top_k(top_k: int) -> int:
  """`top_k`, or a UserError if it is not a whole number of results, 1 or more."""
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise UserError(f'top_k is {top_k!r}: ask for a whole number of results, 1 or more.')
  return int(top_k)


def index_target(directory) -> Path:
  """`directory` as a Path, or a UserError if a file stands where an index would be written."""
  directory = Path(directory)
  existing = next(p for p in (directory, *directory.parents) if p.exists())
  if not existing.is_dir():
    raise UserError(
      f'Cannot write an index to {directory}: {existing} is a file. Give a new directory, or '
      'an index directory to replace.'
    )
  return directory


def _incomplete(directory: Path, problem: str) -> UserError:
  return UserError(
    f'The embedding index in {directory} is incomplete ({problem}). Make it again with '
    f'python -m medclip_jax.predict embed --model=MODEL --images=DIR --out={directory}.'
  )


@dataclasses.dataclass(frozen=True)
class Index:
  """Image embeddings with their ids and sources, and the model they came from."""

  embeddings: np.ndarray  # [N, D] unit vectors
  ids: list[str]
  sources: list[str]
  model: str  # the model's fingerprint
  model_path: str
  step: int

  def save(self, directory) -> Path:
    """Writes the index to `directory` (made if missing; an index there is replaced). Each file
    is written beside its final name and moved in, index.json last and the old one removed
    first, so that an interrupted save leaves no index mixing two."""
    directory = index_target(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = {key: directory / f'{name}.partial' for key, name in INDEX_FILES.items()}
    with open(partial['embeddings'], 'wb') as f:
      np.save(f, self.embeddings.astype(np.float32))
    with open(partial['items'], 'w', encoding='utf-8') as f:
      for i, s in zip(self.ids, self.sources):
        f.write(json.dumps({'id': i, 'source': s}, ensure_ascii=False) + '\n')
    meta = {
      'model': self.model,
      'model_path': self.model_path,
      'step': self.step,
      'count': len(self.ids),
      'dim': int(self.embeddings.shape[1]),
    }
    partial['meta'].write_text(json.dumps(meta, indent=2) + '\n')
    (directory / INDEX_FILES['meta']).unlink(missing_ok=True)
    for key in ('embeddings', 'items', 'meta'):
      os.replace(partial[key], directory / INDEX_FILES[key])
    return directory

  @classmethod
  def load(cls, directory) -> Index:
    directory = Path(directory)
    if not (directory / INDEX_FILES['meta']).is_file():
      raise UserError(
        f'{directory} is not an embedding index (no {INDEX_FILES["meta"]}); make one with '
        'python -m medclip_jax.predict embed.'
      )
    missing = [name for name in INDEX_FILES.values() if not (directory / name).is_file()]
    if missing:
      raise _incomplete(directory, f'no {", ".join(missing)}')
    try:
      meta = json.loads((directory / INDEX_FILES['meta']).read_text())
      lines = (directory / INDEX_FILES['items']).read_text(encoding='utf-8').splitlines()
      rows = [json.loads(line) for line in lines]
      index = cls(
        np.load(directory / INDEX_FILES['embeddings']),
        [r['id'] for r in rows],
        [r['source'] for r in rows],
        meta['model'],
        meta['model_path'],
        meta['step'],
      )
    except KeyError as e:
      raise _incomplete(directory, f'its files lack {e}') from e
    except (ValueError, TypeError, EOFError) as e:  # unparsable JSON or array
      raise _incomplete(directory, f'unreadable: {e}') from e
    if len(index.ids) != len(index.embeddings):
      raise _incomplete(directory, f'{len(index.ids)} items for {len(index.embeddings)} embeddings')
    return index

  def check_model(self, model: str, describe: str) -> None:
    if not self.model.startswith(FINGERPRINT_VERSION):
      raise UserError(
        'This index was made by an earlier version of medclip_jax, whose model fingerprint '
        "cannot be compared with today's: make the index again (python -m "
        'medclip_jax.predict embed --model=...).'
      )
    if model != self.model:
      raise UserError(
        f'This index was made by another model ({self.model_path}, step {self.step}); the model '
        f'searching it is {describe}. Its embeddings are not comparable: make the index again '
        'with this model (python -m medclip_jax.predict embed --model=...).'
      )


def best(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best scores of each row, best first (ties: the lower index)."""
  return np.argsort(-scores, axis=-1, kind='stable')[..., :k]


class Retrieval:
  """What both model classes share: reading and batching images, zero-shot, captioning and
  search over their encoders.

  A subclass defines `preprocess(image)` (one image as its tower takes it),
  `_embed_pixels(preprocessed) -> [N, D]` (unit vectors of a list of those; or
  `_start_embedding` and `_finish_embedding`, which split it in two),
  `encode_texts(texts) -> [N, D]`, `scale()` (the exponentiated logit scale),
  `batch_size`, `embed_dim`, `fingerprint`, `path`, `step` and `describe()`.
  """

  def encode_images(self, images) -> np.ndarray:
    """Unit image embeddings [N, D] ([D] for one image)."""
    images, single = as_list(images)
    emb = self._encode_in_batches(images)
    return emb[0] if single else emb

  def _encode_in_batches(self, images: list, progress=None, on_unreadable=None) -> np.ndarray:
    """Embeddings of `images` in batches of `batch_size`, each batch read while the one before
    is embedded (`_start_embedding` returns before the embedding is done). With
    `on_unreadable(position, error)`, an image that cannot be read is reported to it and left
    out instead of raising its UserError."""
    out, pending = [np.zeros((0, self.embed_dim), np.float32)], None

    def finish(started, done):
      if started is not None:
        out.append(self._finish_embedding(started))
      if progress:
        progress(done, len(images))

    def read_one(image):
      try:
        return self.preprocess(image)
      except UserError as e:
        if on_unreadable is None:
          raise
        return e

    with contextlib.ExitStack() as stack:
      read = lambda chunk: [read_one(image) for image in chunk]
      if READ_THREADS and len(images) > 1:
        readers = stack.enter_context(futures.ThreadPoolExecutor(READ_THREADS))
        read = lambda chunk: list(readers.map(read_one, chunk))
      for start in range(0, len(images), self.batch_size):
        pixels = []
        for position, item in enumerate(read(images[start : start + self.batch_size]), start):
          if isinstance(item, UserError):
            on_unreadable(position, item)
          else:
            pixels.append(item)
        started = self._start_embedding(pixels) if pixels else None
        if pending is not None:
          finish(*pending)
        pending = started, min(start + self.batch_size, len(images))
      if pending is not None:
        finish(*pending)
    return np.concatenate(out)

  def _start_embedding(self, pixels: list):
    """Starts embedding a batch of preprocessed images; `_finish_embedding` waits for it.
    Here in a thread of its own (PyTorch releases the GIL); the JAX class dispatches
    asynchronously instead."""
    return _AHEAD.submit(self._embed_pixels, pixels)

  def _finish_embedding(self, started) -> np.ndarray:
    return started.result()

  def encode(self, image, text) -> tuple[np.ndarray, np.ndarray]:
    """(image embedding [D], text embedding [D]) of one image and one text."""
    if not isinstance(text, str) or isinstance(image, (list, tuple)):
      # A list of texts would be read as one sentence pair: one vector, silently.
      raise TypeError(
        'encode takes one image and one text (a str); for several, call encode_images and '
        'encode_texts.'
      )
    return self.encode_images([image])[0], self.encode_texts([text])[0]

  def zero_shot(self, images, class_names, templates=None) -> np.ndarray:
    """Class probabilities [N, C] ([C] for one image): softmax of the scaled similarities to
    each class's prompt ensemble (templates with '{}', default the class name itself)."""
    images, single = as_list(images)
    class_names, templates = check_classes(class_names), check_templates(templates)
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = self.encode_texts(prompts).reshape(len(class_names), len(templates), -1).mean(axis=1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    logits = self.scale() * self.encode_images(images) @ emb.T
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities[0] if single else probabilities

  def caption(self, images, bank, top_k: int = 5):
    """The `top_k` bank captions nearest each image: [[(caption, similarity), ...], ...]."""
    images, single = as_list(images)
    check_top_k(top_k)
    texts = read_bank(bank)
    scores = self.encode_images(images) @ self._bank_embeddings(texts).T
    out = [[(texts[j], float(row[j])) for j in best(row, top_k)] for row in scores]
    return out[0] if single else out

  def search(self, text, index, top_k: int = 5):
    """The `top_k` images of `index` (an Index, its directory, or a list of images) nearest
    `text`: [(id, source, similarity), ...]; for a list of texts, one such list each."""
    texts, single = as_list(text)
    check_top_k(top_k)
    index = self._as_index(index)
    scores = self.encode_texts(texts) @ index.embeddings.T
    out = [
      [(index.ids[j], index.sources[j], float(row[j])) for j in best(row, top_k)] for row in scores
    ]
    return out[0] if single else out

  def index(self, images, ids=None, sources=None, progress=None, on_unreadable=None) -> Index:
    """An Index of `images`; ids and sources default to their paths (or positions);
    `progress(done, total)` is called after each batch. With `on_unreadable(position, error)`,
    an image that cannot be read is reported to it and left out of the index (a folder of
    thousands of files need not stop at one corrupt file); without it, such an image raises."""
    images, _ = as_list(images)
    if sources is None:
      sources = [str(i) if isinstance(i, (str, Path)) else '' for i in images]
    ids = list(ids) if ids is not None else [s or str(n) for n, s in enumerate(sources)]
    if not len(ids) == len(sources) == len(images):
      raise UserError(
        f'index: {len(images)} images, {len(ids)} ids and {len(sources)} sources; give one id '
        'and one source for each image (or leave them out).'
      )
    left_out = set()

    def leave_out(position, error):
      left_out.add(position)
      on_unreadable(position, error)

    embeddings = self._encode_in_batches(images, progress, on_unreadable and leave_out)
    if left_out:
      if len(left_out) == len(images):
        raise UserError(
          f'None of the {len(images)} images could be read (the first: '
          f'{sources[0] or ids[0]}); give PNG, JPEG or DICOM files.'
        )
      kept = [n for n in range(len(images)) if n not in left_out]
      ids, sources = [ids[n] for n in kept], [sources[n] for n in kept]
    return Index(embeddings, ids, sources, self.fingerprint, str(self.path), self.step)

  def _as_index(self, index) -> Index:
    if isinstance(index, (str, Path)):
      index = Index.load(index)
    elif not isinstance(index, Index):
      index = self.index(index)
    index.check_model(self.fingerprint, self.describe())
    return index

  def _bank_embeddings(self, texts: list[str]) -> np.ndarray:
    key = hashlib.sha256(json.dumps(texts).encode()).hexdigest()  # captions may hold newlines
    cache = self.__dict__.setdefault('_banks', {})
    if key not in cache:
      cache.clear()  # one bank at a time: banks can be large
      cache[key] = self.encode_texts(texts)
    return cache[key]


class MedCLIP(Retrieval):
  """A trained medical CLIP in JAX; see the module docstring."""

  def __init__(self, loaded, batch_size: int = BATCH_SIZE):
    from medclip_jax.training import setup  # pylint: disable=import-outside-toplevel

    self.config, self.step, self.path = loaded.config, loaded.step, loaded.path
    self._loaded = loaded
    evaluation = setup.evaluation(self.config, {})
    self._embedder = evaluation.embedder
    self._variables = evaluation.place(loaded.variables)
    self._devices = self._embedder.mesh.size
    self.batch_size = max(batch_size, self._devices)
    params = loaded.variables['params']
    self._scale = float(np.exp(params['logit_scale']))
    from medclip_jax.interop import convert  # pylint: disable=import-outside-toplevel

    stats = loaded.variables['batch_stats']['image_encoder']
    self.fingerprint = fingerprint(
      params['image_projection']['kernel'],
      params['text_projection']['kernel'],
      params['logit_scale'],
      {
        **{
          f'image.{k}': v
          for k, v in convert.resnet_to_torchvision(params['image_encoder'], stats).items()
        },
        **{f'text.{k}': v for k, v in convert.bert_to_hf(params['text_encoder']).items()},
      },
    )

  @classmethod
  def load(cls, path, step: int | None = None, batch_size: int = BATCH_SIZE) -> MedCLIP:
    """The model in a training workdir (its latest checkpoint, or `step`) or an export."""
    from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel

    return cls(load.load(path, step), batch_size)

  def describe(self) -> str:
    return self._loaded.describe()

  def scale(self) -> float:
    return self._scale

  def _bucket(self, n: int) -> int:
    """The batch size for n items: a power of two times the device count, at most batch_size."""
    size = self._devices
    while size < min(n, self.batch_size):
      size *= 2
    return size

  @property
  def embed_dim(self) -> int:
    return self.config.model.embed_dim

  def preprocess(self, image) -> np.ndarray:
    """uint8 [S, S, 3] of one image, as evaluation crops it."""
    return read_image(image, self.config.data.image_size, self._loaded.max_side)

  def _start_embedding(self, pixels: list):
    # JAX dispatches asynchronously: this returns while the devices embed the batch.
    return self._embedder.start_pixels(self._variables, np.stack(pixels), self._bucket(len(pixels)))

  def _finish_embedding(self, started) -> np.ndarray:
    return self._embedder.collect(started)

  def encode_texts(self, texts) -> np.ndarray:
    """Unit text embeddings [N, D] ([D] for one text)."""
    texts, single = as_list(texts)
    if not texts:
      return np.zeros((0, self.embed_dim), np.float32)
    emb = self._embedder.encode_strings(self._variables, texts, self._bucket(len(texts)))
    return emb[0] if single else emb
