"""Eval-mode embedding functions, compiled once and shared by every evaluator.

All embeddings use the model in eval mode (BatchNorm running statistics, no
dropout), which is how an exported model is used. Images and token ids are
sharded over the mesh; the embeddings come back replicated, as NumPy arrays.
"""

import dataclasses

import jax
import numpy as np

from medclip_jax import sharding
from medclip_jax.data import images as image_lib
from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.model.clip import MedCLIP


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """Every record of a split, embedded: row i of each array is record i of the split."""

  name: str
  image: np.ndarray | None  # [N, D] unit-norm image embeddings (None if not asked for)
  text: np.ndarray | None  # [N, D] unit-norm embeddings of each record's (first) caption
  # The other captions of images that have several: [K, D] embeddings and the
  # record [K] each belongs to (K = 0 when every image has one caption).
  more_text: np.ndarray | None
  more_text_record: np.ndarray
  labels: dict[str, np.ndarray]  # field -> [N] class index into vocabs[field], -1 if unknown
  vocabs: dict[str, list[str]]  # field -> class names, from dataset_info.json
  # Per record: 'id', 'group' (case or patient), 'caption', 'captions',
  # 'image_key' (equal for records that show the same image); see
  # pipeline.split_metadata.
  meta: dict[str, list]

  def __len__(self) -> int:
    return len(self.meta['id'])

  def all_captions(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """Every caption of the records `rows` (distinct; default: all): (embeddings [M, D], the
    record of each [M], the texts): each record's first caption, then the others."""
    rows = np.arange(len(self)) if rows is None else np.asarray(rows)
    more = np.isin(self.more_text_record, rows)
    texts = [self.meta['caption'][r] for r in rows] + [
      c for r in np.unique(self.more_text_record[more]) for c in self.meta['captions'][r][1:]
    ]
    return (
      np.concatenate([self.text[rows], self.more_text[more]]),
      np.concatenate([rows, self.more_text_record[more]]),
      texts,
    )


class Embedder:
  """Jitted image and text encoders over a mesh, and the loops that batch inputs for them."""

  def __init__(self, model: MedCLIP, config, mesh):
    self.model = model
    self.config = config
    self.mesh = mesh
    self.batch_size = config.eval.batch_size
    sharding.check_batch_size(self.batch_size, mesh, 'eval.batch_size')
    self.tokenizer = tokenizer_lib.load(config.data.tokenizer)
    replicated = sharding.replicated(mesh)
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def encode_images(variables, images):
      return model.apply(
        variables, pipeline.normalize(images, mean, std), train=False, method=MedCLIP.encode_image
      )

    def encode_texts(variables, input_ids, attention_mask):
      return model.apply(
        variables, input_ids, attention_mask, train=False, method=MedCLIP.encode_text
      )

    # uint8 images [B, H, W, 3] (a global batch) -> [B, D], replicated.
    self.encode_images = jax.jit(encode_images, out_shardings=replicated)
    # Token ids and mask [B, T] -> [B, D], replicated.
    self.encode_texts = jax.jit(encode_texts, out_shardings=replicated)
    self._gather = jax.jit(lambda x: x, out_shardings=replicated)
    self._cache = {}
    # XLA:CPU runs every device of a program on one shared thread pool, so two independent
    # programs with collectives in flight at once can each hold threads the other waits
    # for (seen with 8 simulated devices). There, each batch is finished before the next
    # is dispatched; elsewhere they overlap with the host's work.
    self._one_at_a_time = mesh.size > 1 and jax.default_backend() == 'cpu'

  def tokenize(self, texts: list[str]) -> dict:
    """Token ids and masks [N, max_text_length], padded and truncated as in training."""
    tokens = self.tokenizer(
      list(texts),
      max_length=self.config.data.max_text_length,
      padding='max_length',
      truncation=True,
      return_tensors='np',
    )
    return {k: tokens[k].astype(np.int32) for k in ('input_ids', 'attention_mask')}

  def _start(self, encode, arrays: dict, batch_size: int | None) -> tuple[list, int]:
    """Dispatches encode(**rows) over `arrays` (every process holds them in full) in padded
    batches, without waiting for the results: (the batches' outputs, the row count), for
    `collect`."""
    size = batch_size or self.batch_size
    n = len(next(iter(arrays.values())))
    padded = -(-n // size) * size
    out = []
    for start in range(0, padded, size):
      rows = {}
      for name, array in arrays.items():
        chunk = array[start : start + size]
        pad = np.zeros((size - len(chunk), *array.shape[1:]), array.dtype)
        rows[name] = np.concatenate([chunk, pad]) if len(pad) else chunk
      # Every process holds all rows, so each device takes its own.
      out.append(encode(**sharding.from_host_copy(rows, self.mesh)))
      if self._one_at_a_time:
        jax.block_until_ready(out[-1])
    return out, n

  @staticmethod
  def collect(started: tuple[list, int]) -> np.ndarray:
    """The embeddings [N, D] that `_start` or `start_pixels` dispatched, once computed."""
    batches, n = started
    return np.concatenate([np.asarray(b) for b in batches])[:n]

  def encode_strings(self, variables, texts: list[str], batch_size: int | None = None):
    """Embeddings [len(texts), D] of texts every process holds in full (e.g. prompts)."""
    encode = lambda input_ids, attention_mask: self.encode_texts(
      variables, input_ids, attention_mask
    )
    return self.collect(self._start(encode, self.tokenize(texts), batch_size))

  def start_pixels(self, variables, pixels: np.ndarray, batch_size: int | None = None):
    """`encode_pixels` without waiting for the result, which `collect` returns: the host can
    read the next images meanwhile."""
    encode = lambda images: self.encode_images(variables, images)
    return self._start(encode, {'images': np.asarray(pixels, np.uint8)}, batch_size)

  def encode_pixels(self, variables, pixels: np.ndarray, batch_size: int | None = None):
    """Embeddings [N, D] of uint8 images [N, S, S, 3] every process holds in full."""
    return self.collect(self.start_pixels(variables, pixels, batch_size))

  def encode_split(
    self, variables, split: str, label_vocabs: dict, images: bool = True, texts: bool = True
  ) -> EncodedSplit:
    """Image and caption embeddings (those asked for), labels and metadata of every record of
    `split`. Splits already embedded with the same `variables` come from a cache."""
    key = (id(variables), split, images, texts)
    if key not in self._cache:
      self._cache[key] = self._encode_split(variables, split, label_vocabs, images, texts)
    return self._cache[key]

  def split_size(self, split: str) -> int:
    """The number of records in `split` (0 for a split the dataset does not have)."""
    try:
      return len(pipeline.source(self.config.data, split))
    except FileNotFoundError:
      return 0

  def pixels(self, split: str, rows) -> np.ndarray:
    """uint8 images [len(rows), S, S, 3] of records `rows` of `split`, as evaluation crops them."""
    source, size = pipeline.source(self.config.data, split), self.config.data.image_size
    decoded = (image_lib.decode(records.decode(source[i])['image']) for i in rows)
    return np.stack([image_lib.center_crop(image, size) for image in decoded])

  def image_bytes(self, split: str, index: int) -> bytes:
    """The stored image (PNG bytes) of record `index` of `split`, e.g. for a report."""
    return records.decode(pipeline.source(self.config.data, split)[index])['image']

  def clear_cache(self) -> None:
    """Forgets embedded splits (before evaluating other variables)."""
    self._cache.clear()

  def _encode_split(self, variables, split, label_vocabs, images, texts) -> EncodedSplit:
    out = {'index': [], 'image': [], 'text': [], **{f'label/{f}': [] for f in label_vocabs}}
    for local in pipeline.eval_batches(
      self.config.data,
      split,
      global_batch_size=self.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      label_vocabs=label_vocabs,
    ):
      batch = sharding.to_global_batch(local, self.mesh)
      mask = np.asarray(self._gather(batch['mask'])).astype(bool)
      if images:
        out['image'].append(np.asarray(self.encode_images(variables, batch['image']))[mask])
      if texts:
        ids, attention = batch['input_ids'], batch['attention_mask']
        out['text'].append(np.asarray(self.encode_texts(variables, ids, attention))[mask])
      for name in ['index', *(f'label/{f}' for f in label_vocabs)]:
        out[name].append(np.asarray(self._gather(batch[name]))[mask])
    # Rows arrive in the order the processes' shares interleave: put them in split order.
    order = np.argsort(np.concatenate(out['index']), kind='stable')
    rows = {k: np.concatenate(v)[order] if v else None for k, v in out.items()}
    meta = pipeline.split_metadata(self.config.data, split)
    more = [(i, c) for i, several in enumerate(meta['captions']) for c in several[1:]]
    more_text = None
    if texts:
      more_text = np.zeros((0, rows['text'].shape[1]), rows['text'].dtype)
      if more:
        more_text = self.encode_strings(variables, [c for _, c in more])
    return EncodedSplit(
      name=split,
      image=rows['image'],
      text=rows['text'],
      more_text=more_text,
      more_text_record=np.array([i for i, _ in more], np.int64),
      labels={f: rows[f'label/{f}'] for f in label_vocabs},
      vocabs=dict(label_vocabs),
      meta=meta,
    )
