"""Tests of medclip_jax.data.ingest: image loading (every mode, alpha, huge images, the
reasons a file is skipped), caption cleaning and the split of a group."""

import collections
import io

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import ingest
from tests.helpers import bad_images
from tests.helpers import jpeg
from tests.helpers import noise
from tests.helpers import png
from tests.helpers import write


@pytest.mark.parametrize(
  'mode,want',
  [
    ('1', 'L'),
    ('L', 'L'),
    ('I;16', 'L'),
    ('I', 'L'),
    ('F', 'L'),
    ('LA', 'L'),
    ('P', 'RGB'),
    ('RGBA', 'RGB'),
    ('CMYK', 'RGB'),
    ('RGB', 'RGB'),
  ],
)
def test_load_image_converts_every_mode(mode, want):
  if mode in ('I;16', 'I', 'F'):
    dtype = {'I;16': np.uint16, 'I': np.int32, 'F': np.float32}[mode]
    image = Image.fromarray(
      np.linspace(-5 if mode != 'I;16' else 5, 900, 600).astype(dtype).reshape(20, 30)
    )
    assert image.mode == mode
  else:
    image = noise(mode, (30, 20))
  if mode in ('I', 'F', 'CMYK'):  # not writable as PNG
    data = io.BytesIO()
    image.save(data, 'TIFF')
    data = data.getvalue()
  else:
    data = png(image)
  out = Image.open(io.BytesIO(ingest.load_image(data)))
  assert out.format == 'PNG' and out.mode == want and out.size == (30, 20)
  if mode in ('I;16', 'I', 'F'):  # stretched by min and max
    pixels = np.asarray(out)
    assert pixels.min() == 0 and pixels.max() == 255


def test_load_image_composites_alpha_on_black():
  image = Image.new('RGBA', (4, 4), (200, 100, 50, 0))
  image.putpixel((0, 0), (200, 100, 50, 255))
  pixels = np.asarray(Image.open(io.BytesIO(ingest.load_image(png(image)))))
  assert pixels[0, 0].tolist() == [200, 100, 50]
  assert pixels[1, 1].tolist() == [0, 0, 0]


def test_load_image_shrinks_huge_images():
  huge = jpeg(Image.new('RGB', (6000, 3000), (10, 20, 30)))
  out = Image.open(io.BytesIO(ingest.load_image(huge, max_side=100)))
  assert out.size == (100, 50) and out.mode == 'RGB'


def test_load_image_reasons(tmp_path, monkeypatch):
  for name, (data, reason) in bad_images().items():
    write(tmp_path, name, data)
    with pytest.raises(ingest.BadRecord) as e:
      ingest.load_image(str(tmp_path / name))
    assert e.value.reason == reason, name
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # the bomb limit is twice this
  with pytest.raises(ingest.BadRecord, match='image too large'):
    ingest.load_image(png(noise('L', (100, 100))))


def test_clean_caption():
  assert ingest.clean_caption('  a\n\tb  c ') == ('a b c', False)
  assert ingest.clean_caption(b'x \xff y') == ('x \ufffd y', True)
  assert ingest.clean_caption(b'caf\xc3\xa9') == ('caf\u00e9', False)
  for empty in ('', ' \n\t ', b'  '):
    with pytest.raises(ingest.BadRecord, match='empty caption'):
      ingest.clean_caption(empty)


def test_split_by_group_is_deterministic_and_honours_fractions():
  splits = [ingest.split_by_group(f'case-{i}', 0, 0.2, 0.1) for i in range(2000)]
  assert splits == [ingest.split_by_group(f'case-{i}', 0, 0.2, 0.1) for i in range(2000)]
  counts = collections.Counter(splits)
  assert 340 < counts['val'] < 460 and 140 < counts['test'] < 260
  assert splits != [ingest.split_by_group(f'case-{i}', 1, 0.2, 0.1) for i in range(2000)]
  assert {ingest.split_by_group(f'case-{i}', 0, 0.0, 0.0) for i in range(100)} == {'train'}
