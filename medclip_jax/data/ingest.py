"""Helpers shared by the real-dataset formats of medclip_jax.data.prepare.

Real data is messy: files go missing, are empty, truncated or not images at
all, come in every PIL mode and at any size, and captions hold stray bytes.
These helpers turn one input into record fields or raise `BadRecord` with a
short reason, so that prepare can skip the input and report it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings

import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps

DEFAULT_MAX_SIDE = 512
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


class BadRecord(Exception):
  """An input that cannot become a record; `reason` says why, in a few words."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def read_bytes(path: str) -> bytes:
  """The contents of `path`; BadRecord if it is missing or empty."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
    raise BadRecord('missing file') from e
  except OSError as e:
    raise BadRecord('unreadable file') from e
  if not data:
    raise BadRecord('empty file')
  return data


def _rescale_to_l(image: Image.Image) -> Image.Image:
  """A 16-bit / int / float image stretched by its min and max to 8 bits."""
  pixels = np.asarray(image, dtype=np.float64)
  low, high = float(pixels.min()), float(pixels.max())
  scale = 255.0 / (high - low) if high > low else 0.0
  return Image.fromarray(np.round((pixels - low) * scale).astype(np.uint8), 'L')


def _on_black(image: Image.Image) -> Image.Image:
  """An image with alpha composited on black, as 'RGB'."""
  black = Image.new('RGBA', image.size, (0, 0, 0, 255))
  return Image.alpha_composite(black, image.convert('RGBA')).convert('RGB')


def _to_l_or_rgb(image: Image.Image) -> Image.Image:
  mode = image.mode
  if mode == 'L':
    return image
  if mode == '1':
    return image.convert('L')
  if mode in _SIXTEEN_BIT_MODES:
    return _rescale_to_l(image)
  if mode in ('LA', 'La'):
    return _on_black(image).convert('L')
  if mode == 'P':
    if 'transparency' in image.info:
      return _on_black(image)
    return image.convert('RGB')
  if mode in ('RGBA', 'RGBa', 'PA'):
    return _on_black(image)
  return image.convert('RGB')


def load_image(source: str | bytes, max_side: int = DEFAULT_MAX_SIDE) -> bytes:
  """An image file (path or bytes) as the bytes a record stores of it: a JPEG's own bytes
  when decoding them gives exactly `open_image`'s image (mode 'L' or 'RGB', no EXIF
  rotation, no side over `max_side`), otherwise `open_image`'s image as PNG.

  Kept JPEGs are several times smaller than their PNG and faster to decode, and
  training can decode them at reduced size (`images.decode_reduced`). The bytes
  are decoded here either way, so a corrupt file is a BadRecord as before.
  """
  data = read_bytes(source) if isinstance(source, str) else bytes(source)
  image, as_given = _open(data, max_side)
  return data if as_given else encode_png(image)


def is_jpeg(data: bytes) -> bool:
  """Whether stored image bytes are a JPEG (its start-of-image marker) rather than PNG."""
  return data[:2] == b'\xff\xd8'


def encode_png(image: Image.Image) -> bytes:
  """`image` as PNG bytes (lossless: decoding gives back its pixels)."""
  out = io.BytesIO()
  image.save(out, 'PNG')
  return out.getvalue()


def open_image(source: str | bytes, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
  """An image file (path or bytes) as a loaded PIL image, mode 'L' or 'RGB'.

  Single-channel images become 'L' (16-bit and float ones stretched by their
  min and max), colour ones 'RGB' (alpha composited on black). The longer
  side is shrunk to at most `max_side`; JPEGs are decoded at reduced size.
  Raises BadRecord instead of PIL's exceptions.
  """
  data = read_bytes(source) if isinstance(source, str) else bytes(source)
  return _open(data, max_side)[0]


def _open(data: bytes, max_side: int) -> tuple[Image.Image, bool]:
  """`open_image`'s image of `data`, and whether decoding `data` as it is gives it (a JPEG
  of mode 'L' or 'RGB' that is neither turned by its EXIF orientation nor shrunk)."""
  if not data:
    raise BadRecord('empty file')
  try:
    with warnings.catch_warnings():
      # Images between PIL's warning and error limits are fine: they are shrunk below.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      as_given = (
        image.format == 'JPEG'
        and image.mode in ('L', 'RGB')
        and max(image.size) <= max_side
        # Orientations 2-8 are those exif_transpose flips or rotates.
        and image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9)
      )
      if image.format == 'JPEG':
        image.draft(image.mode if image.mode in ('L', 'RGB') else None, (max_side, max_side))
      image.load()
      image = ImageOps.exif_transpose(image)
      image = _to_l_or_rgb(image)
      image.thumbnail((max_side, max_side))
  except Image.DecompressionBombError as e:
    raise BadRecord('image too large') from e
  except Image.UnidentifiedImageError as e:
    raise BadRecord('not an image') from e
  except Exception as e:  # PIL's decoders raise many unrelated types on corrupt data.
    raise BadRecord('truncated or corrupt image') from e
  return image, as_given


def repair_text(text: str) -> tuple[str, bool]:
  """`text` with undecodable bytes (surrogate escapes) replaced; and whether any were."""
  try:
    text.encode('utf-8')
    return text, False
  except UnicodeEncodeError:
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace'), True


def clean_caption(raw: str | bytes) -> tuple[str, bool]:
  """The caption with whitespace collapsed, and whether bad bytes were replaced.

  Bytes are decoded as UTF-8; invalid bytes (also surrogate escapes in a str,
  from files read with errors='surrogateescape') become U+FFFD. Raises
  BadRecord('empty caption') if nothing is left.
  """
  if isinstance(raw, bytes):
    raw = raw.decode('utf-8', 'surrogateescape')
  text, repaired = repair_text(raw)
  text = re.sub(r'\s+', ' ', text).strip()
  if not text:
    raise BadRecord('empty caption')
  return text, repaired


def split_by_group(group: str, seed: int, val_fraction: float, test_fraction: float) -> str:
  """'train', 'val' or 'test' for `group`, by a hash, so a group never spans splits."""
  digest = hashlib.sha256(f'{seed}:{group}'.encode('utf-8', 'surrogateescape')).digest()
  position = int.from_bytes(digest[:8], 'big') / 2**64
  if position < test_fraction:
    return 'test'
  if position < test_fraction + val_fraction:
    return 'val'
  return 'train'


def misaligned(row: dict) -> str:
  """'more' or 'fewer' for a csv.DictReader row with more or fewer cells than its header,
  else '': DictReader files extra cells under None and fills missing ones with None."""
  return 'more' if None in row else 'fewer' if None in row.values() else ''


def find_image(name: str, directories: list[str]) -> str:
  """The path of image `name` in the first of `directories` that has it.

  An absolute `name` is used as is; a missing file gives the first candidate,
  so that loading it reports 'missing file'. A path written on Windows
  ('images\\a.png') is found too.
  """
  if os.path.isabs(name):
    return name
  spellings = [name, name.replace('\\', '/')] if os.sep == '/' and '\\' in name else [name]
  candidates = [os.path.join(d, n) for n in spellings for d in directories]
  return next((c for c in candidates if os.path.isfile(c)), candidates[0])
