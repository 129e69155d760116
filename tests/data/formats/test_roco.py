"""Tests of the roco format: ROCO (v1) folders keep their official splits; ROCOv2's CSV
layout."""

from medclip_jax.data import prepare
from tests.helpers import MAX_SIDE
from tests.helpers import all_records
from tests.helpers import jpeg
from tests.helpers import noise
from tests.helpers import png
from tests.helpers import write
from tests.helpers import write_csv


def test_roco_keeps_official_splits(tmp_path):
  counts = {'train': 3, 'validation': 2, 'test': 1}
  number = 0
  for folder, count in counts.items():
    radiology = tmp_path / folder / 'radiology'
    lines = []
    for _ in range(count):
      number += 1
      write(radiology / 'images', f'ROCO_{number:05d}.jpg', jpeg(noise('L', seed=number)))
      lines.append(f'ROCO_{number:05d}\t CT scan number {number} ')
    if folder == 'train':
      lines += ['no tab here', 'ROCO_99999\tmissing image', 'ROCO_00001\tduplicate']
    (radiology / 'captions.txt').write_text('\n'.join(lines) + '\n')
  info = prepare.prepare(
    'roco', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=0.5
  )
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 3, 'val': 2, 'test': 1}
  assert info['skipped'] == [
    {'id': 'train line 4', 'reason': 'malformed line'},
    {'id': 'ROCO_99999', 'reason': 'missing file'},
    {'id': 'ROCO_00001', 'reason': 'duplicate id'},
  ]
  by_split = all_records(tmp_path / 'out')
  assert [r['id'] for r in by_split['val']] == ['ROCO_00004', 'ROCO_00005']
  assert by_split['train'][0]['caption'] == 'CT scan number 1'


def test_rocov2_csv_layout(tmp_path):
  folders = {'train': 'train', 'valid': 'val', 'test': 'test'}
  for i, folder in enumerate(folders):
    image_id = f'ROCOv2_2023_{folder}_{i:06d}'
    write(tmp_path / folder, image_id + '.png', png(noise('RGB', seed=i)))
    write_csv(tmp_path / f'{folder}_captions.csv', ['ID', 'Caption'], [[image_id, f'x ray {i}']])
  info = prepare.prepare('roco', str(tmp_path / 'out'), input=str(tmp_path))
  assert {s: v['count'] for s, v in info['splits'].items()} == {'train': 1, 'val': 1, 'test': 1}
  by_split = all_records(tmp_path / 'out')
  assert by_split['val'][0]['id'] == 'ROCOv2_2023_valid_000001'


def test_roco_images_named_as_its_fetch_script_saved_them_before_2022(tmp_path):
  # <PMC id>_<name in the article's package>, which dlinks.txt beside captions.txt gives
  # for every ROCO id (since 2022 fetch.py names them by ROCO id, as the test above).
  radiology = tmp_path / 'train' / 'radiology'
  captions, dlinks = [], []
  for number, (pmc, name) in enumerate([('PMC3498864', 'jovr-04-256f2.jpg'), ('PMC42', 'gr3.jpg')]):
    write(radiology / 'images', f'{pmc}_{name}', jpeg(noise('L', seed=number)))
    captions.append(f'ROCO_{number:05d}\tcaption {number}')
    dlinks.append(
      f'ROCO_{number:05d}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/69/93/'
      f'{pmc}.tar.gz -P /path/to/Dir\t{name}'
    )
  captions.append('ROCO_00002\tnot fetched')
  dlinks.append('ROCO_00002\twget -r ftp://x/PMC7.tar.gz -P /path/to/Dir\tf1.jpg')
  (radiology / 'captions.txt').write_text('\n'.join(captions) + '\n')
  (radiology / 'dlinks.txt').write_text('\n'.join(dlinks) + '\n')
  info = prepare.prepare(
    'roco', str(tmp_path / 'out'), input=str(tmp_path), max_side=MAX_SIDE, max_bad_fraction=0.5
  )
  assert info['splits']['train']['count'] == 2
  assert info['skipped'] == [{'id': 'ROCO_00002', 'reason': 'missing file'}]
  assert [r['caption'] for r in all_records(tmp_path / 'out')['train']] == [
    'caption 0',
    'caption 1',
  ]
