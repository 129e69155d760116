"""Images as the model sees them, for training, evaluation and inference alike (no JAX here).

A prepared record stores its image as bytes made by `ingest.load_image` (the
input's own JPEG where that decodes to exactly the image prepare reads, PNG
otherwise) or the dicom format's reader (PNG); evaluation decodes them in full
and takes the centred square at the model's size, training decodes a large
JPEG at reduced size for its random crop (`decode_reduced`). `read` turns what
a user hands over (a file path to a PNG, JPEG or DICOM file, a PIL image, an
array) into the image those bytes hold, so an image given at inference time is
processed exactly as the evaluation processes a prepared record of it. The
PyTorch export uses this module too.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from medclip_jax.data import ingest
from medclip_jax.data import records
from medclip_jax.errors import UserError


def is_dicom(path) -> bool:
  """Whether the file at `path` is DICOM: the 'DICM' mark after its preamble, or a .dcm name."""
  path = Path(path)
  if path.suffix.lower() in ('.dcm', '.dicom'):
    return True
  with open(path, 'rb') as f:
    f.seek(128)
    return f.read(4) == b'DICM'


def read(image, max_side: int = ingest.DEFAULT_MAX_SIDE) -> Image.Image:
  """The image, mode 'L' or 'RGB', that `prepare` would store for a file path,
  encoded image bytes (a prepared record's), a PIL image or a uint8/float array.

  Raises ingest.BadRecord with a short reason for a missing, empty, corrupt
  or unreadable file.
  """
  if isinstance(image, (str, Path)):
    path = str(image)
    if not Path(path).is_file():
      raise ingest.BadRecord('missing file')
    if is_dicom(path):
      from medclip_jax.data.formats import dicom  # pylint: disable=import-outside-toplevel

      return dicom.open_image(path, max_side)
    return ingest.open_image(path, max_side)
  if isinstance(image, bytes):
    return ingest.open_image(image, max_side)
  if isinstance(image, np.ndarray):
    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    if array.size == 0:
      raise ingest.BadRecord(f'an array of shape {array.shape} is empty')
    if array.dtype.kind in 'fc' and not np.isfinite(array).all():
      raise ingest.BadRecord('the array holds NaN or infinite values')
    if array.dtype != np.uint8:  # stretched by its min and max, as prepare does 16-bit images
      low, high = float(array.min()), float(array.max())
      array = ((array - low) / (high - low or 1.0) * 255).round().astype(np.uint8)
    try:
      image = Image.fromarray(array)
    except TypeError as e:
      raise ingest.BadRecord(f'an array of shape {array.shape} is no image') from e
  if isinstance(image, Image.Image):
    if 0 in image.size:
      raise ingest.BadRecord(f'the image is empty ({image.width}x{image.height})')
    # TIFF holds the file modes (CMYK, 16-bit, float) losslessly, for open_image to convert;
    # not the in-memory ones (HSV, premultiplied alpha), whose nearest file mode it gets.
    file_mode = {'HSV': 'RGB', 'RGBa': 'RGBA', 'La': 'LA'}.get(image.mode)
    image = image.convert(file_mode) if file_mode else image
    out = io.BytesIO()
    image.save(out, 'TIFF')
    return ingest.open_image(out.getvalue(), max_side)
  raise TypeError(
    f'An image is a file path, image bytes, a PIL image or a numpy array, not a '
    f'{type(image).__name__}.'
  )


def decode(data: bytes) -> Image.Image:
  """Stored image bytes (PNG or JPEG, told apart by PIL) as an RGB PIL image, in full."""
  image = Image.open(io.BytesIO(data))
  image.draft('RGB', (image.width, image.height))  # JPEG: decode no larger than needed
  return image.convert('RGB')


def decode_reduced(data: bytes, min_side: int | None) -> Image.Image:
  """Stored image bytes as a PIL image of mode 'L' or 'RGB', a JPEG decoded at the smallest
  of 1/2, 1/4 and 1/8 of its size whose shorter side is still at least `min_side` (None:
  in full). The JPEG decoder scales in the DCT domain, which cuts most of the decoding
  time; the pixels differ a little from a full decode resized, so this is for training's
  crops only (evaluation and inference decode in full)."""
  image = Image.open(io.BytesIO(data))
  if image.format == 'JPEG' and min_side:
    # draft picks the largest scale keeping both sides at least these.
    image.draft(image.mode, (min_side, min_side))
  return image if image.mode in ('L', 'RGB') else image.convert('RGB')


def square_resize(image: Image.Image, box, size: int) -> np.ndarray:
  """The `box` of `image` ('L' or 'RGB') resized to size x size, as uint8 RGB [size, size, 3].

  A grey image is made RGB after resizing, which gives the same pixels for a third
  of the work (resampling treats each channel alike).
  """
  resized = image.resize((size, size), Image.BILINEAR, box=box)
  return np.asarray(resized if resized.mode == 'RGB' else resized.convert('RGB'), np.uint8)


def center_crop(image: Image.Image, size: int) -> np.ndarray:
  """The largest centred square, resized to size x size (evaluation's crop)."""
  side = min(image.width, image.height)
  left, top = (image.width - side) / 2, (image.height - side) / 2
  return square_resize(image, (left, top, left + side, top + side), size)


def model_input(image, size: int, max_side: int = ingest.DEFAULT_MAX_SIDE) -> np.ndarray:
  """uint8 [size, size, 3]: `image` (anything `read` takes) read as prepare reads it with
  `max_side` and centre-cropped as evaluation crops the stored image (which holds the same
  pixels: PNG is lossless and a JPEG is kept only where its bytes decode to them, so
  nothing is encoded here)."""
  return center_crop(read(image, max_side).convert('RGB'), size)


def prepared_max_side(data_config) -> int:
  """The longest side prepare (or a TFDS build) stored `config.data`'s images at (its
  --max_side), which a model's inputs are read at too; the default when the dataset is not
  at hand."""
  try:
    if data_config.get('tfds_name'):
      # pipeline imports this module.
      from medclip_jax.data import pipeline  # pylint: disable=import-outside-toplevel

      info = pipeline.tfds_info(data_config)
    else:
      info = records.read_dataset_info(data_config.dir)
  except (FileNotFoundError, UserError):
    return ingest.DEFAULT_MAX_SIDE
  return max_side_of(info)


def max_side_of(info: dict) -> int:
  """The longest side a dataset's info says its images were stored at (prepare's
  --max_side; the default for formats that take none)."""
  return int(info.get('max_side', ingest.DEFAULT_MAX_SIDE))
