"""python -m medclip_jax.predict: embed, caption, search and zero-shot from a workdir and from an
export, readable and --json output, and one paragraph with exit status 2 for each user error."""

import json
import re
import shutil

import numpy as np
import pytest
from absl import flags
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from medclip_jax import predict
from medclip_jax.interop import export
from medclip_jax.interop import tables
from tests import helpers


@pytest.fixture(scope='module')
def paths(trained_run, tmp_path_factory):
  """{'workdir', 'export', 'other' (an export with other weights), 'images' (a folder)}."""
  config, workdir, _ = trained_run
  root = tmp_path_factory.mktemp('predict')
  exported = export.export(str(workdir), str(root / 'export'))
  other = root / 'other'
  shutil.copytree(exported, other)
  heads = load_file(str(other / tables.EXPORT_FILES['heads']))
  name = tables.HEADS['image_projection']
  heads[name] = np.ascontiguousarray(heads[name] * 2)
  save_file(heads, str(other / tables.EXPORT_FILES['heads']))
  images = root / 'images' / 'nested'
  images.mkdir(parents=True)
  for n, record in enumerate(helpers.split_records(config.data.dir, 'test')[:12]):
    (images / f'{n:02d}.png').write_bytes(record['image'])
  return {
    'workdir': str(workdir),
    'export': str(exported),
    'other': str(other),
    'images': str(root / 'images'),
    'data': config.data.dir,
    'root': root,
  }


def predict_cli(capsys, *args):
  """(exit status, stdout, stderr) of `predict *args`, run in this process."""
  flag_values = flags.FlagValues()
  predict._define_flags(flag_values)
  argv = flag_values(['predict', *args])
  status = predict.cli(argv, flag_values)
  out, err = capsys.readouterr()
  return status, out, err


def test_embed_then_search_from_a_workdir_and_its_export(paths, capsys):
  index = paths['root'] / 'index'
  status, out, _ = predict_cli(
    capsys, 'embed', f'--model={paths["workdir"]}', f'--images={paths["images"]}', f'--out={index}'
  )
  assert status == 0 and 'wrote 12 image embeddings' in out
  assert len((index / 'items.jsonl').read_text().splitlines()) == 12
  assert np.load(index / 'embeddings.npy').shape == (12, 32)
  runs = {}
  for model in ('workdir', 'export'):
    status, out, _ = predict_cli(
      capsys, 'search', f'--model={paths[model]}', '--text=MRI of the brain.', f'--index={index}',
      '--json',
    )  # fmt: skip
    assert status == 0
    runs[model] = [r['id'] for r in json.loads(out)['results']]
  assert runs['workdir'] == runs['export'] and len(runs['export']) == 5
  # Without an index, the folder is embedded on the spot: the same ranking.
  status, out, _ = predict_cli(
    capsys, 'search', f'--model={paths["export"]}', '--text=MRI of the brain.',
    f'--images={paths["images"]}', '--top-k=3',
  )  # fmt: skip
  assert status == 0 and "images nearest 'MRI of the brain.'" in out
  assert [line.split()[1] for line in out.splitlines()[2:]] == runs['export'][:3]


def test_embed_a_prepared_split(paths, capsys):
  index = paths['root'] / 'split_index'
  status, out, _ = predict_cli(
    capsys, 'embed', f'--model={paths["export"]}', f'--data={paths["data"]}', '--split=test',
    '--limit=10', f'--out={index}', '--json',
  )  # fmt: skip
  assert status == 0 and json.loads(out)['count'] == 10
  rows = [json.loads(line) for line in (index / 'items.jsonl').read_text().splitlines()]
  test_ids = [r['id'] for r in helpers.split_records(paths['data'], 'test')[:10]]
  assert [r['id'] for r in rows] == test_ids and rows[0]['source'].endswith(':test:0')


def test_embed_leaves_out_an_unreadable_file_and_says_so(paths, capsys):
  folder = paths['root'] / 'one_bad'
  shutil.copytree(paths['images'], folder)
  png = (folder / 'nested' / '03.png').read_bytes()
  (folder / 'nested' / '03.png').write_bytes(png[: len(png) // 2])  # truncated
  index = paths['root'] / 'one_bad_index'
  status, out, err = predict_cli(
    capsys, 'embed', f'--model={paths["export"]}', f'--images={folder}', f'--out={index}', '--json'
  )
  assert status == 0
  result = json.loads(out)
  assert result['count'] == 11 and len(result['unreadable']) == 1
  assert result['unreadable'][0]['image'].endswith('03.png')
  assert 'skipped: Cannot read the image' in err and '03.png' in err
  rows = [json.loads(line) for line in (index / 'items.jsonl').read_text().splitlines()]
  assert len(rows) == 11 and not any(r['id'].endswith('03.png') for r in rows)
  # The other 11 embed as they do in a folder without the bad file.
  whole = paths['root'] / 'whole_index'
  assert predict_cli(
    capsys, 'embed', f'--model={paths["export"]}', f'--images={paths["images"]}', f'--out={whole}'
  )[0] == 0  # fmt: skip
  kept = [n for n in range(12) if n != 3]
  np.testing.assert_allclose(
    np.load(index / 'embeddings.npy'), np.load(whole / 'embeddings.npy')[kept], atol=1e-6
  )
  # A search over such a folder says what it left out too.
  status, out, err = predict_cli(
    capsys, 'search', f'--model={paths["export"]}', '--text=CT', f'--images={folder}'
  )
  assert status == 0 and 'left out 1 unreadable images' in out and '03.png' in err


def test_caption_from_a_workdir_and_an_export(paths, capsys):
  image = f'{paths["images"]}/nested/00.png'
  found = {}
  for model in ('workdir', 'export'):
    status, out, _ = predict_cli(
      capsys, 'caption', f'--model={paths[model]}', f'--image={image}',
      f'--bank-data={paths["data"]}', '--top_k=3', '--json',
    )  # fmt: skip
    assert status == 0
    (item,) = json.loads(out)['images']
    found[model] = [c['caption'] for c in item['captions']]
  assert found['workdir'] == found['export'] and len(found['export']) == 3
  train_captions = {r['caption'] for r in helpers.split_records(paths['data'], 'train')}
  assert set(found['export']) <= train_captions
  bank = paths['root'] / 'bank.txt'
  bank.write_text('\n'.join(found['export'][::-1]) + '\n')
  status, out, _ = predict_cli(
    capsys, 'caption', f'--model={paths["workdir"]}', f'--image={image}', f'--bank={bank}'
  )
  assert status == 0
  assert [line.split(None, 1)[1] for line in out.splitlines()[2:]] == found['export']


def test_zeroshot_prints_each_class_probability(paths, capsys):
  image = f'{paths["images"]}/nested/01.png'
  args = (f'--image={image}', '--classes=CT,MRI,X-ray', '--templates={} image.')
  status, out, _ = predict_cli(capsys, 'zeroshot', f'--model={paths["export"]}', *args, '--json')
  assert status == 0
  probabilities = json.loads(out)['images'][0]['probabilities']
  assert set(probabilities) == {'CT', 'MRI', 'X-ray'}
  assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
  status, out, _ = predict_cli(capsys, 'zeroshot', f'--model={paths["workdir"]}', *args)
  best = max(probabilities, key=probabilities.get)
  assert status == 0 and out.splitlines()[1].startswith(f'{image}: {best} ')


def test_a_bank_repeating_a_caption_lists_it_once(paths, capsys):
  bank = paths['root'] / 'repeats.txt'
  bank.write_text('No acute findings.\n' * 3 + 'Axial CT of the brain.\nMRI of the knee.\n')
  image = f'--image={paths["images"]}/nested/00.png'
  status, out, _ = predict_cli(
    capsys, 'caption', f'--model={paths["export"]}', image, f'--bank={bank}', '--top_k=3', '--json'
  )
  assert status == 0
  found = [c['caption'] for c in json.loads(out)['images'][0]['captions']]
  assert sorted(found) == ['Axial CT of the brain.', 'MRI of the knee.', 'No acute findings.']


def _bad_file(paths, name, data):
  helpers.write(paths['root'] / 'bad', name, data)
  return str(paths['root'] / 'bad' / name)


@pytest.mark.parametrize(
  ('case', 'expected'),
  [
    ('missing image', 'Cannot read the image .*missing.png: missing file'),
    ('corrupt image', 'Cannot read the image .*half.png: truncated or corrupt image'),
    ('unreadable dicom', 'Cannot read the image .*scan.dcm: '),
    ('not a model', 'is neither a training workdir .* nor an export directory'),
    ('empty bank', 'The caption bank .*empty.txt holds no captions'),
    ('empty folder', 'holds no PNG, JPEG or DICOM files'),
    ('index of another model', r'This index was made by another model \(.*export, step 12\)'),
    ('no bank', 'predict caption needs --bank or --bank_data'),
    # Said before a model is looked for (loading one takes seconds) or images are embedded.
    ('inputs before the model', 'holds no PNG, JPEG or DICOM files'),
    ('template without a class', r"template 'axial scan' must hold '\{\}' once"),
    ('template naming a label', r"template '\{\} of the \{body_part\}\.' must hold '\{\}' once"),
    ('top_k below 1', 'top_k is -1: ask for a whole number of results, 1 or more'),
    ('two inputs', r'predict embed takes --images or --data, not both'),
    ('two banks', r'predict caption takes --bank or --bank_data, not both'),
    ('index and images', r'predict search takes --index or --images, not both'),
    ('limit on a folder', r'predict embed --limit applies to --data \(a prepared split\) only'),
    ('negative limit', r'--limit=-1 is not a number of records: give 0 \(all\) or more'),
    ('index where a file stands', r'Cannot write an index to .*taken: .*taken is a file'),
    ('incomplete index', r'The embedding index in .*no_items is incomplete \(no items\.jsonl\)'),
    ('split the data lacks', r"has no 'valid' split \(its splits with records: test, train, val\)"),
    ('repeated class', r"The class names repeat 'CT'"),
    ('no readable image', r'None of the 2 images could be read \(the first: .*a\.png\)'),
    ('misspelt command', r'predict takes one command, .*; got serach \(did you mean search\?\)'),
  ],
)
def test_a_user_error_is_one_paragraph_and_exit_2(paths, capsys, case, expected):
  png = helpers.png(helpers.noise('RGB', (64, 64)))
  model = f'--model={paths["export"]}'
  image = f'--image={paths["images"]}/nested/00.png'
  no_model = f'--model={paths["root"]}/no_model'
  if case == 'missing image':
    args = [
      'caption',
      model,
      f'--image={paths["root"]}/missing.png',
      f'--bank-data={paths["data"]}',
    ]
  elif case == 'corrupt image':
    bad = _bad_file(paths, 'half.png', png[: len(png) // 2])
    args = ['zeroshot', model, f'--image={bad}', '--classes=CT,MRI']
  elif case == 'unreadable dicom':
    bad = _bad_file(paths, 'scan.dcm', b'\0' * 128 + b'DICM' + b'\x02\x00garbage')
    args = ['zeroshot', model, f'--image={bad}', '--classes=CT,MRI']
  elif case == 'not a model':
    args = ['caption', f'--model={paths["images"]}', image, f'--bank-data={paths["data"]}']
  elif case == 'empty bank':
    bank = _bad_file(paths, 'empty.txt', b'\n  \n')
    args = ['caption', model, image, f'--bank={bank}']
  elif case in ('empty folder', 'inputs before the model'):
    (paths['root'] / 'no_images').mkdir(exist_ok=True)
    if case != 'empty folder':
      model = f'--model={paths["root"]}/no_model'
    args = ['embed', model, f'--images={paths["root"]}/no_images', f'--out={paths["root"]}/x']
  elif case.startswith('template'):
    template = 'axial scan' if case.endswith('class') else '{} of the {body_part}.'
    args = ['zeroshot', no_model, image, '--classes=CT,MRI', f'--templates={template}']
  elif case == 'top_k below 1':
    args = ['search', no_model, '--text=CT', f'--images={paths["images"]}', '--top_k=-1']
  elif case == 'index where a file stands':
    taken = _bad_file(paths, 'taken', b'notes')
    args = ['embed', no_model, f'--images={paths["images"]}', f'--out={taken}']
  elif case == 'incomplete index':
    index = paths['root'] / 'no_items'
    status, _, _ = predict_cli(
      capsys, 'embed', f'--model={paths["export"]}', f'--images={paths["images"]}', f'--out={index}'
    )
    assert status == 0
    (index / 'items.jsonl').unlink()
    args = ['search', no_model, '--text=CT', f'--index={index}']
  elif case == 'index of another model':
    index = paths['root'] / 'other_index'
    status, _, _ = predict_cli(
      capsys, 'embed', f'--model={paths["export"]}', f'--images={paths["images"]}', f'--out={index}'
    )
    assert status == 0
    args = ['search', f'--model={paths["other"]}', '--text=CT', f'--index={index}']
  elif case == 'split the data lacks':
    args = [
      'embed',
      no_model,
      f'--data={paths["data"]}',
      '--split=valid',
      f'--out={paths["root"]}/y',
    ]
  elif case == 'two inputs':
    args = ['embed', no_model, f'--images={paths["images"]}', f'--data={paths["data"]}']
  elif case == 'two banks':
    args = ['caption', no_model, image, f'--bank-data={paths["data"]}', '--bank=b.txt']
  elif case == 'index and images':
    args = ['search', no_model, '--text=CT', f'--images={paths["images"]}', '--index=i']
  elif case == 'limit on a folder':
    args = ['embed', no_model, f'--images={paths["images"]}', '--limit=3', '--out=o']
  elif case == 'negative limit':
    args = ['embed', model, f'--data={paths["data"]}', '--limit=-1', f'--out={paths["root"]}/l']
  elif case == 'repeated class':
    args = ['zeroshot', no_model, image, '--classes=CT,MRI,CT']
  elif case == 'misspelt command':
    args = ['serach', model, '--text=CT']
  elif case == 'no readable image':
    for name in ('a.png', 'b.png'):
      helpers.write(paths['root'] / 'bad' / 'unreadable', name, png[:40])
    args = ['embed', model, f'--images={paths["root"]}/bad/unreadable', f'--out={paths["root"]}/z']
  else:
    args = ['caption', model, image]
  status, out, err = predict_cli(capsys, *args)
  if case == 'no readable image':  # each file's reason comes first, a line each
    assert err.count('skipped: Cannot read the image') == 2
    err = err.split('\n\n', 1)[1]
  assert status == 2 and out == ''
  assert 'Traceback' not in err
  message = err.strip()
  assert message.startswith('error: ') and '\n\n' not in message
  assert re.search(expected, message), message


def test_the_command_runs_as_a_module(paths):
  result = helpers.run_module(
    'medclip_jax.predict', 'zeroshot', f'--model={paths["workdir"]}',
    f'--image={paths["images"]}/nested/00.png', '--classes=CT,MRI',
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('model: ') and 'CT ' in result.stdout
  result = helpers.run_module(
    'medclip_jax.predict', 'zeroshot', f'--model={paths["images"]}',
    f'--image={paths["images"]}/nested/00.png', '--classes=CT,MRI',
  )  # fmt: skip
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'neither a training workdir' in result.stderr
