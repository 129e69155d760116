"""Images given to a trained model: read, decoded and cropped exactly as evaluation reads a
prepared record of the same file; every kind of input; the reasons a bad one is refused."""

import io

import numpy as np
import PIL.Image
import pytest

from medclip_jax.data import images
from medclip_jax.data import ingest
from medclip_jax.data import pipeline
from medclip_jax.data import records
from tests import helpers

SIZE = 16


def _evaluation_pixels(prepared, record_id):
  """The eval pipeline's image of the prepared record `record_id`."""
  preprocess = pipeline.Preprocess(helpers.data_config(dir=str(prepared), image_size=SIZE))
  for split in records.SPLITS:
    for record in helpers.split_records(prepared, split):
      if record['id'] == record_id:
        return preprocess(records.encode(record))['image']
  raise KeyError(record_id)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
  """(prepared dir, {id: source file}) of the manifest fixture (every PIL mode, a huge JPEG)."""
  directory = tmp_path_factory.mktemp('manifest')
  options, good, _ = helpers.write_manifest_fixture(directory)
  out = directory / 'prepared'
  helpers.prepare_checked('manifest', out, options)
  return out, {i: directory / 'data' / i for i in good if i != 'img/bad_utf8.png'}


@pytest.fixture(scope='module')
def dicoms(tmp_path_factory):
  """(prepared dir, {id: source file}) of the DICOM fixture (CT window, MONOCHROME1, RLE, ...)."""
  directory = tmp_path_factory.mktemp('dicom')
  options, good, _ = helpers.write_dicom_fixture(directory / 'in')
  out = directory / 'prepared'
  helpers.prepare_checked('dicom', out, options)
  return out, {i: directory / 'in' / i for i in good}


def test_a_file_is_read_as_evaluation_reads_its_prepared_record(manifest):
  prepared, files = manifest
  for record_id, path in files.items():
    pixels = images.model_input(path, SIZE, max_side=helpers.MAX_SIDE)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(
      pixels, _evaluation_pixels(prepared, record_id), err_msg=record_id
    )


def test_a_dicom_file_is_read_by_the_dicom_formats_rules(dicoms):
  prepared, files = dicoms
  for record_id, path in files.items():
    pixels = images.model_input(path, SIZE, max_side=helpers.MAX_SIDE)
    np.testing.assert_array_equal(
      pixels, _evaluation_pixels(prepared, record_id), err_msg=record_id
    )


def test_a_dicom_file_without_its_suffix_is_still_recognised(dicoms, tmp_path):
  _, files = dicoms
  path = files['p1/ct_window.dcm']
  renamed = tmp_path / 'ct_window'
  renamed.write_bytes(path.read_bytes())
  assert images.is_dicom(renamed)
  np.testing.assert_array_equal(images.model_input(renamed, SIZE), images.model_input(path, SIZE))


def test_bytes_pil_images_and_arrays_give_the_files_pixels(tmp_path):
  for name, data in helpers.good_images().items():
    path = tmp_path / name
    path.write_bytes(data)
    expected = images.model_input(path, SIZE)
    decoded = PIL.Image.open(io.BytesIO(data))  # in its own mode: 1, P, I;16, CMYK, ...
    for given in (data, decoded):
      np.testing.assert_array_equal(images.model_input(given, SIZE), expected, err_msg=name)
  rgb = helpers.noise('RGB', (40, 30))
  expected = images.model_input(helpers.png(rgb), SIZE)
  np.testing.assert_array_equal(images.model_input(np.asarray(rgb), SIZE), expected)


def test_float_and_one_channel_arrays_are_stretched_to_the_full_range():
  ramp = np.linspace(-1000.0, 3000.0, 32 * 32).reshape(32, 32, 1)  # e.g. CT values
  pixels = images.model_input(ramp, SIZE)
  assert pixels.shape == (SIZE, SIZE, 3)
  assert pixels.min() <= 8 and pixels.max() >= 247


def test_pil_images_in_modes_only_memory_holds_read_as_their_file_mode():
  rgb = helpers.noise('RGB', (40, 30))
  expected = images.model_input(rgb, SIZE)
  hsv = images.model_input(rgb.convert('HSV'), SIZE).astype(int)
  assert np.abs(hsv - expected).max() <= 8  # HSV holds hue in 8 bits: not exact
  np.testing.assert_array_equal(images.model_input(rgb.convert('RGBa'), SIZE), expected)
  grey = helpers.noise('L', (40, 30))
  np.testing.assert_array_equal(
    images.model_input(grey.convert('LA').convert('La'), SIZE), images.model_input(grey, SIZE)
  )


def test_the_longest_side_is_capped_as_prepare_caps_it():
  tall = PIL.Image.new('L', (100, 400), 90)
  assert images.read(tall, max_side=64).size == (16, 64)


@pytest.mark.parametrize('name', sorted(helpers.bad_images()))
def test_a_missing_or_corrupt_file_is_refused_with_its_reason(tmp_path, name):
  data, reason = helpers.bad_images()[name]
  helpers.write(tmp_path, name, data)
  with pytest.raises(ingest.BadRecord) as raised:
    images.read(tmp_path / name)
  assert raised.value.reason == reason


def test_an_unreadable_dicom_is_refused_with_its_reason(tmp_path):
  path = tmp_path / 'scan.dcm'
  path.write_bytes(b'\0' * 128 + b'DICM' + b'\x02\x00\x10\x00garbage')
  with pytest.raises(ingest.BadRecord) as raised:
    images.read(path)
  assert raised.value.reason


def test_what_is_no_image_is_refused():
  with pytest.raises(ingest.BadRecord, match='no image'):
    images.read(np.zeros((2, 3, 4, 5)))
  with pytest.raises(ingest.BadRecord, match='is empty'):
    images.read(np.zeros((0, 3)))
  with pytest.raises(ingest.BadRecord, match='the image is empty'):
    images.read(PIL.Image.new('L', (0, 5)))
  with pytest.raises(ingest.BadRecord, match='NaN or infinite'):
    images.read(np.full((4, 4), np.nan, np.float32))
  with pytest.raises(TypeError, match='file path, image bytes, a PIL image or a numpy array'):
    images.read(42)


def test_the_max_side_of_a_prepared_dataset_is_the_one_it_was_prepared_with(manifest, tiny_data):
  prepared, _ = manifest
  assert images.prepared_max_side(helpers.data_config(dir=str(prepared))) == helpers.MAX_SIDE
  # Synthetic data records none; a dataset not at hand neither: the default.
  assert images.prepared_max_side(helpers.data_config(dir=tiny_data)) == ingest.DEFAULT_MAX_SIDE
  assert images.prepared_max_side(helpers.data_config(dir='/nonexistent')) == 512
