"""Eval-mode embedding functions, compiled once and shared by every evaluator.

All embeddings use the model in eval mode (BatchNorm running statistics, no
dropout), which is how an exported model is used. Images and token ids are
sharded over the mesh; the embeddings come back replicated, as NumPy arrays.
"""

import dataclasses

import jax
import numpy as np

from medclip_jax import sharding
from medclip_jax.data import pipeline
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.model.clip import MedCLIP


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """Every record of a split, embedded: row i of each array is record i."""

  name: str
  image: np.ndarray  # [N, D] unit-norm image embeddings
  text: np.ndarray  # [N, D] unit-norm caption embeddings
  labels: dict[str, np.ndarray]  # field -> [N] class index into vocabs[field], -1 if unknown
  vocabs: dict[str, list[str]]  # field -> class names, from dataset_info.json


class Embedder:
  """Jitted image and text encoders over a mesh, and the loops that batch inputs for them."""

  def __init__(self, model: MedCLIP, config, mesh):
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

  def encode_strings(self, variables, texts: list[str]) -> np.ndarray:
    """Embeddings [len(texts), D] of texts every process holds in full (e.g. prompts)."""
    tokens = self.tokenizer(
      texts,
      max_length=self.config.data.max_text_length,
      padding='max_length',
      truncation=True,
      return_tensors='np',
    )
    n = len(texts)
    padded = -(-n // self.batch_size) * self.batch_size
    ids = np.zeros((padded, tokens['input_ids'].shape[1]), np.int32)
    mask = np.zeros_like(ids)
    ids[:n], mask[:n] = tokens['input_ids'], tokens['attention_mask']
    out = []
    for start in range(0, padded, self.batch_size):
      rows = slice(start, start + self.batch_size)
      # Every process holds all texts, so each device takes its own rows.
      batch = sharding.from_host_copy(
        {'input_ids': ids[rows], 'attention_mask': mask[rows]}, self.mesh
      )
      out.append(
        np.asarray(self.encode_texts(variables, batch['input_ids'], batch['attention_mask']))
      )
    return np.concatenate(out)[:n]

  def encode_split(self, variables, split: str, label_vocabs: dict) -> EncodedSplit:
    """Image and caption embeddings and labels of every record of `split`."""
    images, texts, labels = [], [], {f: [] for f in label_vocabs}
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
      images.append(np.asarray(self.encode_images(variables, batch['image']))[mask])
      texts.append(
        np.asarray(self.encode_texts(variables, batch['input_ids'], batch['attention_mask']))[mask]
      )
      for field in labels:
        labels[field].append(np.asarray(self._gather(batch[f'label/{field}']))[mask])
    return EncodedSplit(
      name=split,
      image=np.concatenate(images),
      text=np.concatenate(texts),
      labels={f: np.concatenate(v) for f, v in labels.items()},
      vocabs=dict(label_vocabs),
    )
