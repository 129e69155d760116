"""Examples as records: the seed stream of each example, PNG encoding and the generator."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from medclip_jax.data.synthetic.captions import caption
from medclip_jax.data.synthetic.labels import sample_labels
from medclip_jax.data.synthetic.modalities import render


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), zlib.crc32(split.encode()), index])


def encode_png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img, 'L').save(buf, format='PNG', compress_level=6)
  return buf.getvalue()


def make_example(split: str, index: int, seed: int = 0, image_size: int = 64) -> dict:
  """Example `index` of `split` as a record (see medclip_jax.data.records)."""
  rng = _rng(seed, split, index)
  labels = sample_labels(rng)
  img, place = render(labels, rng, image_size)
  record_id = f'synthetic-{split}-{index:06d}'
  return {
    'id': record_id,
    'group': record_id,
    'image': encode_png(img),
    'caption': caption(rng, labels, place),
    'labels': labels,
  }


def generate(split: str, count: int, seed: int = 0, image_size: int = 64) -> Iterator[dict]:
  """Yields `count` records of `split` (deterministic in seed and split)."""
  if image_size < 32:
    raise ValueError(f'image_size must be >= 32, got {image_size}.')
  if count < 0:
    raise ValueError(f'count must be >= 0, got {count}.')
  for i in range(count):
    yield make_example(split, i, seed, image_size)
