"""The synthetic demo dataset as a format (generator: medclip_jax.data.synthetic)."""

from __future__ import annotations

from medclip_jax.data import synthetic
from medclip_jax.data.formats.base import OptionError
from medclip_jax.data.formats.base import Source


def source(
  seed: int = 0,
  num_train: int = 8000,
  num_val: int = 500,
  num_test: int = 1000,
  image_size: int = 64,
) -> Source:
  """The synthetic demo dataset (medclip_jax.data.synthetic)."""
  counts = {'train': num_train, 'val': num_val, 'test': num_test}
  for split, count in counts.items():
    if count < 0:
      raise OptionError(f'num_{split} must be >= 0, got {count}.')
  if image_size < 32:
    raise OptionError(f'image_size must be >= 32, got {image_size}.')

  def generate_all():
    for split, count in counts.items():
      yield from synthetic.generate(split, count, seed, image_size)

  def split_of(record: dict) -> str:
    # Each synthetic split has its own seed stream; the id names it.
    return record['id'].split('-')[1]

  return Source(
    records=generate_all(),
    split_of=split_of,
    labels=synthetic.LABELS,
    info={'image_size': image_size, 'seed': seed},
  )
