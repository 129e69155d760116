"""Input that keeps an accelerator fed: prepare keeps a JPEG's own bytes where they decode to
the image it would store, training decodes large JPEGs at reduced size for its crops (and
evaluation in full), and worker processes scale with the cores, resuming at any count."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import images
from medclip_jax.data import input_benchmark
from medclip_jax.data import pipeline
from medclip_jax.data import prepare
from medclip_jax.data import records
from medclip_jax.errors import UserError
from tests import helpers

MAX_SIDE = 128
PNG_START = b'\x89PNG'


def _scene(mode, size):
  """A smooth image with a bright block, so that a misplaced crop shows (unlike noise)."""
  width, height = size
  x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
  red, green = 200 * x + 20, 200 * y + 20
  red[height // 4 : height // 2, width // 2 : 3 * width // 4] = 255
  pixels = np.stack([red, green, (red + green) / 2], axis=-1).astype(np.uint8)
  return Image.fromarray(pixels).convert(mode)


def _jpeg(image, **options):
  out = io.BytesIO()
  image.save(out, 'JPEG', quality=90, **options)
  return out.getvalue()


def _rotated_jpeg():
  """A JPEG whose EXIF orientation (6) says it is shown turned a quarter."""
  exif = Image.Exif()
  exif[0x0112] = 6
  return _jpeg(_scene('RGB', (96, 64)), exif=exif.tobytes())


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(dataset info, {name: record}, {name: source file}) of a manifest of JPEGs and a PNG."""
  directory = tmp_path_factory.mktemp('jpegs')
  truncated = _jpeg(_scene('RGB', (100, 100)))
  files = {
    'grey.jpg': _jpeg(_scene('L', (96, 64))),
    'colour.jpg': _jpeg(_scene('RGB', (MAX_SIDE, 80))),
    'cmyk.jpg': _jpeg(_scene('CMYK', (64, 64))),
    'large.jpg': _jpeg(_scene('RGB', (2 * MAX_SIDE, 200))),
    'rotated.jpg': _rotated_jpeg(),
    'scan.png': helpers.png(_scene('L', (64, 48))),
    'truncated.jpg': truncated[: len(truncated) // 2],
  }
  for name, data in files.items():
    helpers.write(directory, name, data)
  csv = directory / 'manifest.csv'
  helpers.write_csv(csv, ['image', 'caption'], [[n, f'Scan {n}.'] for n in files])
  info = prepare.prepare(
    'manifest',
    str(directory / 'out'),
    input=str(csv),
    max_side=MAX_SIDE,
    val_fraction=0.0,
    test_fraction=0.0,
    max_bad_fraction=0.5,
  )
  stored = {r['id']: r for r in helpers.split_records(directory / 'out', 'train')}
  return info, stored, {name: directory / name for name in files}


def test_prepare_keeps_a_jpegs_bytes_only_where_they_decode_to_the_image_it_stores(prepared):
  info, stored, files = prepared
  for name in ('grey.jpg', 'colour.jpg'):
    assert stored[name]['image'] == files[name].read_bytes(), name
    assert stored[name]['image'].startswith(b'\xff\xd8')
  # CMYK, larger than max_side, turned by EXIF: re-encoded as today, as PNG.
  for name in ('cmyk.jpg', 'large.jpg', 'rotated.jpg', 'scan.png'):
    assert stored[name]['image'].startswith(PNG_START), name
  assert Image.open(io.BytesIO(stored['large.jpg']['image'])).size == (MAX_SIDE, 100)
  assert Image.open(io.BytesIO(stored['rotated.jpg']['image'])).size == (64, 96)
  assert info['images_stored_as'] == {'jpeg': 2, 'png': 4}
  assert info['skipped'] == [{'id': 'truncated.jpg', 'reason': 'truncated or corrupt image'}]


def test_a_files_pixels_at_inference_are_its_stored_images(prepared):
  _, stored, files = prepared
  evaluate = pipeline.Preprocess(helpers.data_config())
  for name, record in stored.items():
    read = images.read(files[name], max_side=MAX_SIDE)
    decoded = Image.open(io.BytesIO(record['image']))
    assert decoded.mode == read.mode, name
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(read), err_msg=name)
    # Evaluation's crop of the record is inference's of the file.
    np.testing.assert_array_equal(
      evaluate(records.encode(record))['image'],
      images.model_input(files[name], 16, MAX_SIDE),
      err_msg=name,
    )


def _record(image_bytes):
  return records.encode(helpers.make_record(image=image_bytes))


def test_training_decodes_a_large_jpeg_reduced_and_crops_about_as_a_full_decode_would():
  data = _jpeg(_scene('RGB', (MAX_SIDE, MAX_SIDE)))
  config = helpers.data_config(image_size=16, crop_scale=(0.5, 1.0))
  train = pipeline.Preprocess(config, train=True)
  # The smallest crop (sqrt(0.5) of the side) must keep 16 px: 23 px of side, so 1/4 scale.
  assert train.min_decoded_side == 23
  assert images.decode_reduced(data, train.min_decoded_side).size == (MAX_SIDE // 4,) * 2
  for seed in range(8):
    pixels = train(_record(data), np.random.default_rng(seed))['image']
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    full = pipeline.random_crop(images.decode(data), 16, (0.5, 1.0), np.random.default_rng(seed))
    difference = np.abs(pixels.astype(int) - full.astype(int))
    # A full decode's crop at another place differs by more (mean 3-20, max over 20).
    assert difference.mean() < 1.5 and difference.max() < 16, (seed, difference.mean())


def test_a_png_is_cropped_for_training_exactly_as_before():
  for mode in ('L', 'RGB'):
    data = helpers.png(_scene(mode, (60, 44)))
    assert images.decode_reduced(data, 8).size == (60, 44)
    train = pipeline.Preprocess(helpers.data_config(), train=True)
    for seed in range(4):
      pixels = train(_record(data), np.random.default_rng(seed))['image']
      # What training did before: the RGB image in full, then the crop.
      before = pipeline.random_crop(
        images.decode(data), 16, (0.5, 1.0), np.random.default_rng(seed)
      )
      np.testing.assert_array_equal(pixels, before, err_msg=f'{mode} {seed}')


def test_auto_workers_scale_with_cores_and_leave_small_machines_in_process():
  assert [pipeline.worker_count(-1, cores) for cores in (1, 2, 3, 8, 17, 64)] == [
    0,
    0,
    2,
    7,
    16,
    16,
  ]
  assert pipeline.worker_count(0, 64) == 0 and pipeline.worker_count(5, 2) == 5
  with pytest.raises(UserError, match=r'config\.data\.workers=-2.*-1 \(auto'):
    pipeline.worker_count(-2)


def test_a_containers_cpu_quota_bounds_the_cores_auto_workers_count(tmp_path, monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda _: set(range(64)), raising=False)
  cpu_max = tmp_path / 'cpu.max'
  for line, cores in [('max 100000', 64), ('250000 100000', 3), ('50000 100000', 1)]:
    cpu_max.write_text(line + '\n')
    assert pipeline.available_cores(str(cpu_max)) == cores, line
  assert pipeline.available_cores(str(tmp_path / 'none')) == 64  # no cgroup v2


def _batches(data_dir, workers, text_features=None):
  config = helpers.data_config(
    dir=data_dir, tfds_name='', num_threads=1, prefetch=2, workers=workers
  )
  return pipeline.train_iterator(
    config,
    seed=0,
    local_batch_size=4,
    process_index=0,
    process_count=1,
    text_features=text_features,
  )


def _assert_same_batch(got, want):
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_worker_batches_are_the_in_process_batches_and_resume_at_any_worker_count(tiny_data):
  in_process = _batches(tiny_data, 0)
  expected = [next(in_process) for _ in range(5)]
  with_worker = _batches(tiny_data, 1)
  with_worker.set_state({'next_index': 3})  # as a checkpoint saved in-process is restored
  try:
    for want in expected[3:]:
      _assert_same_batch(next(with_worker), want)
    assert with_worker.get_state() == in_process.get_state() == {'next_index': 5}
  finally:
    with_worker.close()


def test_precomputed_text_features_go_with_their_records_texts_also_from_workers(tiny_data):
  config = helpers.data_config(dir=tiny_data, tfds_name='')
  preprocess = pipeline.Preprocess(config, train=True)
  ids = np.stack([preprocess.tokenize(t)[0] for t in pipeline.train_texts(config)])
  # Row i of the features names record i; taken in this process, not in the workers.
  features = np.repeat(np.arange(len(ids), dtype=np.float32)[:, None], 3, axis=1)
  in_process = _batches(tiny_data, 0, features)
  expected = [next(in_process) for _ in range(30)]  # 120 examples: past the first epoch
  for batch in expected:
    assert 'record' not in batch and batch['text_features'].shape == (4, 3)
    np.testing.assert_array_equal(ids[batch['text_features'][:, 0].astype(int)], batch['input_ids'])
  with_worker = _batches(tiny_data, 1, features)
  try:
    for want in expected[:3]:
      _assert_same_batch(next(with_worker), want)
  finally:
    with_worker.close()


def test_a_position_saved_by_grains_own_worker_iterator_still_resumes(tiny_data):
  in_process = _batches(tiny_data, 0)
  expected = [next(in_process) for _ in range(4)][-1]
  # What grain's mp_prefetch saved with 2 workers after 3 batches (2 from the first).
  saved = {
    'next_index_in_cycle': 1,
    'next_index_in_datasets': 2,
    'iterators_in_use_indices': [0, 1],
    'iterators_in_use_states': [{'next_index': 2}, {'next_index': 1}],
    'exhausted': [0, 0],
    'future_states': {},
  }
  resumed = _batches(tiny_data, 0)
  resumed.set_state(saved)
  _assert_same_batch(next(resumed), expected)
  assert resumed.get_state() == {'next_index': 4}


def test_the_input_benchmark_prepares_jpegs_and_times_both_settings(tmp_path):
  lines, figures = input_benchmark.run(
    str(tmp_path), images=4, side=64, image_size=16, batch_size=2, examples=4
  )
  assert figures['stored_as'] == {'jpeg': 4, 'png': 0}
  settings = figures['settings']
  assert [(s['threads'], s['workers_setting']) for s in settings] == [(1, 0), (2, -1)]
  assert settings[1]['workers'] == pipeline.worker_count(-1)
  assert all(s['images_per_s'] > 0 and s['images_per_s_per_core'] > 0 for s in settings)
  assert len(lines) == 3 and 'per core' in lines[1]


def test_the_input_benchmark_keeps_to_its_own_folder_in_dir(tmp_path):
  (tmp_path / 'manifest.csv').write_text('image,caption\nscan.png,My own data.\n')
  result = helpers.run_module(
    'medclip_jax.data.input_benchmark', f'--dir={tmp_path}', '--images=2', '--side=64',
    '--image_size=16', '--batch_size=2', '--examples=2', timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'manifest.csv').read_text() == 'image,caption\nscan.png,My own data.\n'
  assert (tmp_path / 'input_benchmark' / 'manifest.csv').is_file()
  result = helpers.run_module('medclip_jax.data.input_benchmark', '--images=0')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert '--images=0: give 1 or more' in result.stderr
