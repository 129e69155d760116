"""The Python API of a trained model: loading a workdir or an export, embeddings equal to the
evaluation's, zero-shot, captions, search over an index, the PyTorch class ranking alike, and
the errors a user can cause."""

import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from medclip_jax import inference
from medclip_jax import torch_model
from medclip_jax.errors import UserError
from medclip_jax.interop import export
from medclip_jax.interop import load
from medclip_jax.training import setup
from tests import helpers


@pytest.fixture(scope='module')
def models(trained_run, tmp_path_factory):
  """{'workdir', 'export', 'torch'}: the tiny run loaded three ways."""
  _, workdir, _ = trained_run
  exported = export.export(str(workdir), str(tmp_path_factory.mktemp('export')))
  return {
    'workdir': inference.MedCLIP.load(workdir),
    'export': inference.MedCLIP.load(exported),
    'torch': torch_model.MedCLIP.from_export(exported),  # as the README loads it
  }


@pytest.fixture(scope='module')
def test_split(trained_run, tmp_path_factory):
  """(PNG files of the test split's records, their captions, the evaluation's EncodedSplit)."""
  config, _, _ = trained_run
  folder = tmp_path_factory.mktemp('test_images')
  records = helpers.split_records(config.data.dir, 'test')
  files = []
  for n, record in enumerate(records):
    files.append(folder / f'{n:03d}.png')
    files[-1].write_bytes(record['image'])
  evaluation = setup.evaluation(config, {})
  variables = evaluation.place(load.load(trained_run[1]).variables)
  encoded = evaluation.embedder.encode_split(variables, 'test', {})
  return files, [r['caption'] for r in records], encoded


def test_encode_gives_unit_vectors_whose_dot_is_the_evaluations_similarity(models, test_split):
  files, captions, encoded = test_split
  for name in ('workdir', 'export'):
    for i in (0, 7, 31):
      image, text = models[name].encode(str(files[i]), captions[i])
      assert image.shape == text.shape == (32,)
      np.testing.assert_allclose([np.linalg.norm(image), np.linalg.norm(text)], 1, atol=1e-5)
      assert abs(image @ text - encoded.image[i] @ encoded.text[i]) < 1e-5, (name, i)
  for image, text in ((str(files[0]), captions[:2]), ([str(files[0])] * 2, captions[0])):
    with pytest.raises(TypeError, match='encode takes one image and one text'):
      models['torch'].encode(image, text)  # a list of texts was one sentence pair, silently


def test_lists_are_batched_and_match_one_at_a_time(models, test_split):
  files, captions, encoded = test_split
  model = models['workdir']
  batched = model.encode_images([str(f) for f in files])  # 48: a batch of 64 with padding
  np.testing.assert_allclose(batched, encoded.image, atol=1e-5)
  np.testing.assert_allclose(model.encode_images(str(files[5])), batched[5], atol=1e-5)
  np.testing.assert_allclose(model.encode_texts(captions[:3]), encoded.text[:3], atol=1e-5)
  assert model.encode_images([]).shape == (0, 32)


def test_several_batches_embed_alike_and_report_progress(
  models, test_split, trained_run, monkeypatch
):
  files, _, encoded = test_split
  paths = [str(f) for f in files]  # 48 images: three batches of 16, each read while one runs
  small = inference.MedCLIP.load(trained_run[1], batch_size=16)
  monkeypatch.setattr(models['torch'], 'batch_size', 16)
  for model in (small, models['torch']):
    seen = []
    index = model.index(paths, progress=lambda done, total, seen=seen: seen.append((done, total)))
    np.testing.assert_allclose(index.embeddings, encoded.image, atol=1e-5)
    assert seen == [(16, 48), (32, 48), (48, 48)]


def test_a_workdir_and_its_export_are_one_model(models):
  assert models['workdir'].fingerprint == models['export'].fingerprint
  assert models['workdir'].fingerprint == models['torch'].fingerprint
  assert 'workdir, step 12' in models['workdir'].describe()
  assert 'export, step 12' in models['export'].describe()


def test_jax_and_pytorch_return_the_same_top_5(models, test_split):
  files, captions, _ = test_split
  paths = [str(f) for f in files]
  indexes = {name: model.index(paths) for name, model in models.items()}
  np.testing.assert_allclose(indexes['torch'].embeddings, indexes['workdir'].embeddings, atol=1e-4)
  for query in ('MRI of the brain.', captions[3], 'Chest X-ray with an effusion.'):
    found = {n: [i for i, _, _ in models[n].search(query, indexes[n])] for n in models}
    assert found['workdir'] == found['export'] == found['torch'], query
    assert len(found['torch']) == 5
  bank = captions[10:]
  tops = {n: models[n].caption(paths[:10], bank, top_k=5) for n in models}
  for n in ('export', 'torch'):
    assert [[c for c, _ in row] for row in tops[n]] == [
      [c for c, _ in row] for row in tops['workdir']
    ]


def test_the_pytorch_methods_infer_in_eval_mode_even_on_a_model_being_trained(models, test_split):
  files, captions, _ = test_split
  model, paths = models['torch'], [str(f) for f in files[:8]]
  assert not model.training  # from_export, as from_pretrained, gives a model in eval mode
  before = {k: v.clone() for k, v in model.state_dict().items()}
  expected = model.encode_images(paths), model.encode_texts(captions[:8])
  model.train()
  model.image_encoder.bn1.eval()  # a fine-tune that freezes a BatchNorm
  try:
    np.testing.assert_allclose(model.encode_images(paths), expected[0], atol=1e-6)
    np.testing.assert_allclose(model.encode_texts(captions[:8]), expected[1], atol=1e-6)
    # Each module given back as it was.
    assert model.training and model.image_encoder.training and not model.image_encoder.bn1.training
  finally:
    model.eval()
  for key, value in model.state_dict().items():  # BatchNorm's running statistics untouched
    assert torch.equal(value, before[key]), key


def test_zero_shot_gives_class_probabilities_alike_in_jax_and_pytorch(models, test_split):
  files, _, _ = test_split
  classes = ['CT', 'MRI', 'X-ray', 'ultrasound']
  for model in models.values():
    probabilities = model.zero_shot([str(f) for f in files[:6]], classes, ['{} image.', 'A {}.'])
    assert probabilities.shape == (6, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    one = model.zero_shot(str(files[0]), classes, ['{} image.', 'A {}.'])
    np.testing.assert_allclose(one, probabilities[0], atol=1e-5)
  np.testing.assert_allclose(
    models['torch'].zero_shot(str(files[0]), classes),
    models['workdir'].zero_shot(str(files[0]), classes),
    atol=1e-3,
  )


def test_caption_returns_the_nearest_bank_captions_best_first(models, test_split, tmp_path):
  files, captions, encoded = test_split
  model = models['workdir']
  found = model.caption(str(files[0]), captions, top_k=3)
  expected = np.argsort(-(encoded.text @ encoded.image[0]), kind='stable')[:3]
  assert [c for c, _ in found] == [captions[j] for j in expected]
  assert found[0][1] >= found[1][1] >= found[2][1]
  bank = tmp_path / 'bank.txt'
  bank.write_text('\n'.join(captions) + '\n\n')
  assert model.caption(str(files[0]), str(bank), top_k=3) == found


def test_an_index_saves_loads_and_searches_alike(models, test_split, tmp_path):
  files, _, _ = test_split
  model = models['export']
  index = model.index([str(f) for f in files], ids=[f.stem for f in files])
  loaded = inference.Index.load(index.save(tmp_path / 'index'))
  np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
  assert loaded.ids[:2] == ['000', '001'] and loaded.sources[0] == str(files[0])
  assert model.search('CT of the brain.', tmp_path / 'index') == model.search(
    'CT of the brain.', index
  )


def test_an_index_from_another_model_is_refused(models, test_split):
  files, _, _ = test_split
  index = models['workdir'].index([str(f) for f in files[:4]])
  model = inference.FINGERPRINT_VERSION + 'f' * 16
  other = inference.Index(index.embeddings, index.ids, index.sources, model, '/runs/b', 7)
  with pytest.raises(UserError, match=r'made by another model \(/runs/b, step 7\)'):
    models['workdir'].search('CT', other)
  older = inference.Index(index.embeddings, index.ids, index.sources, 'f' * 16, '/runs/b', 7)
  with pytest.raises(UserError, match='made by an earlier version of medclip_jax'):
    models['workdir'].search('CT', older)


def test_a_model_whose_towers_differ_under_the_same_heads_is_another_model(
  trained_run, models, test_split
):
  """As after fine-tuning with the heads frozen (train.lr_multipliers.heads = 0)."""
  files, _, _ = test_split
  loaded = load.load(trained_run[1])
  variables = jax.tree.map(np.array, loaded.variables)
  embeddings = variables['params']['text_encoder']['embeddings']['word_embeddings']
  embeddings['embedding'][0, 0] += 1.0
  other = inference.MedCLIP(dataclasses.replace(loaded, variables=variables))
  index = models['workdir'].index([str(f) for f in files[:4]])
  with pytest.raises(UserError, match='made by another model'):
    other.search('CT', index)


@pytest.mark.parametrize(
  ('name', 'data', 'reason'),
  [
    ('missing.png', None, 'missing file'),
    ('text.png', b'not an image', 'not an image'),
    ('scan.dcm', b'\0' * 128 + b'DICM' + b'\x02\x00garbage', ''),
  ],
)
def test_a_missing_or_unreadable_image_is_a_user_error(models, tmp_path, name, data, reason):
  helpers.write(tmp_path, name, data)
  with pytest.raises(UserError, match=f'Cannot read the image .*{name}: {reason}'):
    models['workdir'].encode_images([str(tmp_path / name)])
  with pytest.raises(UserError, match=f'Cannot read the image .*{name}'):
    models['torch'].encode_images(str(tmp_path / name))


def test_a_folder_of_images_includes_dicom_files_without_a_suffix(tmp_path):
  scan = helpers.dicom_dataset('p1', helpers.ramp(np.uint8, 0, 255), 'MONOCHROME2')
  helpers.write(
    tmp_path / 'study', 'IM0001', helpers.dicom_file_bytes(scan, enforce_file_format=True)
  )
  helpers.write(
    tmp_path / 'study', 'DICOMDIR', helpers.dicom_file_bytes(scan, enforce_file_format=True)
  )
  helpers.write(tmp_path / 'study', 'README', b'notes')
  helpers.write(tmp_path, 'a.png', helpers.png(helpers.noise('L')))
  assert inference.image_files(tmp_path) == [tmp_path / 'a.png', tmp_path / 'study' / 'IM0001']


def test_empty_banks_folders_and_no_model_are_user_errors(models, tmp_path):
  with pytest.raises(UserError, match='bank is empty'):
    models['workdir'].caption('x.png', [' ', ''])
  (tmp_path / 'bank.txt').write_text('\n \n')
  with pytest.raises(UserError, match='holds no captions'):
    models['workdir'].caption('x.png', str(tmp_path / 'bank.txt'))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
  with pytest.raises(UserError, match='holds no PNG, JPEG or DICOM files'):
    inference.image_files(tmp_path / 'empty')
  with pytest.raises(UserError, match='neither a training workdir'):
    inference.MedCLIP.load(tmp_path / 'empty')
  with pytest.raises(UserError, match='not an embedding index'):
    models['workdir'].search('CT', tmp_path / 'empty')


@pytest.mark.parametrize(
  'template',
  ['axial scan', '{body_part}', '{} of the {body_part}.', '{} or {}', '{} {'],
)
def test_a_template_without_one_class_placeholder_is_a_user_error(models, template):
  """A template without '{}' would give every class the same prompt (equal probabilities)."""
  for model in (models['workdir'], models['torch']):
    with pytest.raises(UserError, match=r"template .* must hold '\{\}' once, where each class"):
      model.zero_shot('scan.png', ['CT', 'MRI'], ['{} image.', template])


@pytest.mark.parametrize(
  'classes, problem',
  [
    ('CT', 'not one string'),
    (['CT', 'MRI', ''], 'hold a blank one'),
    (['CT', 'MRI', 'CT'], "repeat 'CT'"),
    ([], 'at least one class name'),
  ],
)
def test_class_names_that_would_mislead_are_a_user_error(models, classes, problem):
  for model in (models['workdir'], models['torch']):
    with pytest.raises(UserError, match=problem):
      model.zero_shot('scan.png', classes)


def test_a_bank_is_embedded_anew_when_its_captions_change(models, test_split):
  files, _, _ = test_split
  model = models['workdir']
  joined = model.caption(str(files[0]), ['CT of the chest.\nMRI of the brain.'], top_k=2)
  apart = model.caption(str(files[0]), ['CT of the chest.', 'MRI of the brain.'], top_k=2)
  assert len(joined) == 1 and len(apart) == 2
  assert {c: s for c, s in apart} == pytest.approx(
    {
      c: float(model.encode(str(files[0]), c)[0] @ model.encode(str(files[0]), c)[1])
      for c, _ in apart
    },
    abs=1e-5,
  )


def test_an_index_needs_an_id_and_a_source_for_each_image(models, test_split):
  files, _, _ = test_split
  with pytest.raises(UserError, match='3 images, 2 ids and 3 sources'):
    models['workdir'].index([str(f) for f in files[:3]], ids=['a', 'b'])


def test_top_k_below_one_or_not_whole_is_a_user_error(models, test_split):
  files, captions, _ = test_split
  model = models['workdir']
  assert len(model.caption(str(files[0]), captions, top_k=1)) == 1
  assert len(model.caption(str(files[0]), captions, top_k=np.int64(2))) == 2
  for top_k in (0, -1, 1.5):
    expected = f'top_k is {top_k}: ask for a whole number of results, 1 or more'
    with pytest.raises(UserError, match=re.escape(expected)):
      model.caption(str(files[0]), captions, top_k=top_k)
    with pytest.raises(UserError, match=re.escape(expected)):
      model.search('CT', [str(f) for f in files[:4]], top_k=top_k)


def test_texts_paths_classes_and_templates_come_as_lists_arrays_or_one_string(models, test_split):
  files, _, _ = test_split
  paths = [str(f) for f in files[:4]]
  classes = ['CT', 'MRI', 'X-ray']
  for model in (models['workdir'], models['torch']):
    # Several queries rank each alone (a list is not one sentence pair).
    queries = ['CT of the pelvis.', 'MRI of the knee.']
    together = model.search(queries, paths, top_k=2)
    for found, alone in zip(together, [model.search(q, paths, 2) for q in queries], strict=True):
      assert [f[:2] for f in found] == [a[:2] for a in alone]
      assert [f[2] for f in found] == pytest.approx([a[2] for a in alone], abs=1e-5)
    assert model.search(np.array(queries), paths, 2) == together
    # Class names and paths from NumPy or pandas (e.g. df.label.unique()).
    expected = model.zero_shot(paths, classes, ['{} image.'])
    np.testing.assert_allclose(
      model.zero_shot(np.array(paths), np.array(classes, dtype=object), '{} image.'),
      expected,
      atol=1e-6,
    )
    np.testing.assert_allclose(model.encode_texts(np.array(queries)), model.encode_texts(queries))


def _small_index():
  embeddings = helpers.unit_rows(np.random.default_rng(0), (3, 8))
  return inference.Index(embeddings, ['a', 'b', 'c'], ['a.png', 'b.png', 'c.png'], 'f' * 16, 'r', 1)


@pytest.mark.parametrize(
  ('damage', 'problem'),
  [
    ('no items', r'no items\.jsonl'),
    ('old meta', r"its files lack 'model_path'"),
    ('bad json', r'unreadable: '),
    ('short items', r'2 items for 3 embeddings'),
  ],
)
def test_an_incomplete_index_is_a_user_error_saying_how_to_make_it_again(tmp_path, damage, problem):
  directory = _small_index().save(tmp_path / 'index')
  items = directory / 'items.jsonl'
  if damage == 'no items':
    items.unlink()
  elif damage == 'old meta':
    (directory / 'index.json').write_text('{"model": "x"}')
  elif damage == 'bad json':
    items.write_text('{"id": "a", "sou')
  else:
    items.write_text(''.join(items.read_text().splitlines(keepends=True)[:2]))
  with pytest.raises(UserError) as error:
    inference.Index.load(directory)
  message = str(error.value)
  assert message.startswith(f'The embedding index in {directory} is incomplete (')
  assert re.search(problem, message) and '\n' not in message
  assert message.endswith(f'predict embed --model=MODEL --images=DIR --out={directory}.')


def test_an_index_is_not_saved_where_a_file_stands(tmp_path):
  (tmp_path / 'taken').write_text('notes')
  for target in (tmp_path / 'taken', tmp_path / 'taken' / 'index'):
    with pytest.raises(
      UserError, match=re.escape(f'index to {target}: {tmp_path}/taken is a file')
    ):
      _small_index().save(target)
  assert _small_index().save(tmp_path / 'new' / 'index').is_dir()


def test_an_interrupted_save_leaves_the_old_index_whole(tmp_path, monkeypatch):
  old = _small_index()
  directory = old.save(tmp_path / 'index')
  new = dataclasses.replace(old, embeddings=old.embeddings[::-1].copy(), ids=['c', 'b', 'a'])
  rows = []

  def dumps(row, **kwargs):  # interrupted while writing the items
    rows.append(row)
    if len(rows) == 2:
      raise KeyboardInterrupt
    return json.dumps(row, **kwargs)

  monkeypatch.setattr(inference.json, 'dumps', dumps)
  with pytest.raises(KeyboardInterrupt):
    new.save(directory)
  monkeypatch.undo()
  kept = inference.Index.load(directory)
  assert kept.ids == old.ids
  np.testing.assert_array_equal(kept.embeddings, old.embeddings.astype(np.float32))
  new.save(directory)  # a completed save replaces it, leaving nothing beside
  assert inference.Index.load(directory).ids == ['c', 'b', 'a']
  assert sorted(p.name for p in directory.iterdir()) == sorted(inference.INDEX_FILES.values())


@pytest.mark.parametrize(
  ('damage', 'expected'),
  [
    ('no metadata', r'is not an export directory \(it would hold medclip\.json'),
    ('metadata not JSON', r'is damaged or incomplete \(JSONDecodeError: '),
    ('truncated image encoder', r'is damaged or incomplete \(SafetensorError: '),
    ('no text encoder', r'is damaged or incomplete \((OSError|EnvironmentError): '),
    ('heads without a projection', r'is damaged or incomplete \(KeyError: '),
  ],
)
def test_a_damaged_export_is_a_user_error_in_pytorch_too(models, tmp_path, damage, expected):
  directory = tmp_path / 'export'
  shutil.copytree(models['export'].path, directory)
  if damage == 'no metadata':
    (directory / 'medclip.json').unlink()
  elif damage == 'metadata not JSON':
    (directory / 'medclip.json').write_text('{"step": 1,')
  elif damage == 'truncated image encoder':
    weights = directory / 'image_encoder.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
  elif damage == 'no text encoder':
    shutil.rmtree(directory / 'text_encoder')
  else:
    heads = load_file(str(directory / 'heads.safetensors'))
    del heads['image_projection.weight']
    save_file(heads, str(directory / 'heads.safetensors'))
  with pytest.raises(UserError, match=expected) as error:
    torch_model.MedCLIP.from_export(directory)
  message = str(error.value)
  assert '\n' not in message and str(directory) in message
  if damage != 'no metadata':
    assert message.endswith('(python -m medclip_jax.export --workdir=... --out=...).')
