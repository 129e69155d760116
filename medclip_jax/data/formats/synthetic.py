"""The synthetic demo dataset as a format (generator: medclip_jax.data.synthetic)."""

from __future__ import annotations

from medclip_jax.data import records
from medclip_jax.data import synthetic
from medclip_jax.data.formats.base import OptionError
from medclip_jax.data.formats.base import Source


def source(
  seed: int = 0,
  num_train: int = 8000,
  num_val: int = 500,
  num_test: int = 1000,
  image_size: int = 64,
  unpaired_images: int = 0,
  unpaired_texts: int = 0,
) -> Source:
  """The synthetic demo dataset (medclip_jax.data.synthetic); with `unpaired_images` and
  `unpaired_texts`, that many extra training images without a caption and captions without
  an image (drawn from seed streams of their own), for config.data.unpaired."""
  counts = {'train': num_train, 'val': num_val, 'test': num_test}
  numbers = {f'num_{split}': count for split, count in counts.items()}
  numbers.update(unpaired_images=unpaired_images, unpaired_texts=unpaired_texts)
  for name, count in numbers.items():
    if count < 0:
      raise OptionError(f'{name} must be >= 0, got {count}.')
  if image_size < 32:
    raise OptionError(f'image_size must be >= 32, got {image_size}.')

  def generate_all():
    for split, count in counts.items():
      yield from synthetic.generate(split, count, seed, image_size)
    for kind, count in (('image_only', unpaired_images), ('text_only', unpaired_texts)):
      for record in synthetic.generate(
        records.unpaired_split('train', kind), count, seed, image_size
      ):
        # 'synthetic-train_image_only-000001' -> 'synthetic-train-image_only-000001': training's.
        record['id'] = record['group'] = record['id'].replace('train_', 'train-', 1)
        record[records.UNPAIRED_KINDS[kind]] = b'' if kind == 'text_only' else ''
        yield {**record, 'kind': kind}

  def split_of(record: dict) -> str:
    # Each synthetic split has its own seed stream; the id names it.
    return record['id'].split('-')[1]

  return Source(
    records=generate_all(),
    split_of=split_of,
    labels=synthetic.LABELS,
    info={
      'image_size': image_size,
      'seed': seed,
      **({'unpaired': True} if unpaired_images or unpaired_texts else {}),
    },
  )
