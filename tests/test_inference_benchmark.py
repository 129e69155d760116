"""The inference benchmark: its figures are counted right, and it runs on a trained model."""

import re
import types

import pytest

from medclip_jax import inference_benchmark
from medclip_jax.errors import UserError

LABELS = ['body_part', 'modality']


class _Captioner:
  """Answers every image with the caption `answer(row)`, like MedCLIP.caption with top_k=1."""

  def __init__(self, rows, answer):
    self.captions = {r['image']: answer(r) for r in rows}

  def caption(self, images, bank, top_k):
    assert top_k == 1 and bank
    return [[(self.captions[i], 1.0)] for i in images]


def _rows():
  labels = [('brain', 'MRI'), ('chest', 'X-ray'), ('knee', 'CT'), ('spine', 'ultrasound')]
  return [
    {'id': str(n), 'image': bytes([n]), 'labels': {'body_part': b, 'modality': m}}
    for n, (b, m) in enumerate(labels)
  ]


def test_a_caption_counts_when_it_names_both_labels_in_the_captions_words(tiny_data):
  rows = _rows()
  names = inference_benchmark.label_namer(tiny_data)  # synthetic: its synonyms count
  right = {
    '0': 'Axial MR of the head with a mass.',
    '1': 'PA chest radiograph, normal.',
    '2': 'Computed tomography of the left knee.',
    '3': 'Sonography of the L-spine.',
  }
  found = inference_benchmark.measure_captions(
    _Captioner(rows, lambda r: right[r['id']]), rows, ['a bank'], LABELS, names
  )
  assert found['all_named'] == found['body_part_named'] == found['modality_named'] == 1.0

  half = {**right, '0': 'Axial CT of the head.', '1': 'PA abdominal radiograph.'}
  found = inference_benchmark.measure_captions(
    _Captioner(rows, lambda r: half[r['id']]), rows, ['a bank'], LABELS, names
  )
  assert found['all_named'] == 0.5
  assert found['body_part_named'] == 0.75 and found['modality_named'] == 0.75


def test_other_formats_count_the_label_value_itself(tmp_path):
  (tmp_path / 'dataset_info.json').write_text('{"format": "manifest"}')
  names = inference_benchmark.label_namer(str(tmp_path))
  assert names('Axial CT of the head.', 'modality', 'CT')
  assert not names('CTA of the head.', 'modality', 'CT')
  assert not names('Axial MR of the head.', 'body_part', 'brain')  # no synonyms here


def test_it_measures_a_trained_model(trained_run, record_property):
  config, workdir, _ = trained_run
  flags = types.SimpleNamespace(
    model=str(workdir),
    data=config.data.dir,
    images=40,
    captions=10,
    labels=LABELS,
    text='MRI of the brain',
    top_k=3,
  )
  lines = inference_benchmark.run(flags)
  assert re.fullmatch(r'embed 40 test images \(median of 3 rounds\): .* \d+\.\dx', lines[1])
  assert lines[2].startswith('caption 10 test images from 96 training captions')
  assert lines[-4].startswith("search 'MRI of the brain' over 48 test images, top 3:")
  record_property('report', '\n'.join(lines))


def test_a_dataset_without_its_splits_is_a_user_error(trained_run, tmp_path):
  _, workdir, _ = trained_run
  flags = types.SimpleNamespace(model=str(workdir), data=str(tmp_path))
  with pytest.raises(UserError, match='lacks a prepared split'):
    inference_benchmark.run(flags)
