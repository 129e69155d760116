"""Tests of the medpix format: cases kept in one split, labels, and CSV exports without a
case column."""

import json

from medclip_jax.data import prepare
from tests.helpers import MAX_SIDE
from tests.helpers import all_records
from tests.helpers import assert_groups_in_one_split
from tests.helpers import jpeg
from tests.helpers import noise
from tests.helpers import png
from tests.helpers import write
from tests.helpers import write_csv


def test_medpix_keeps_cases_together_and_labels(tmp_path):
  export, expected_groups = [], {}
  for case in range(8):
    for image in range(3 if case == 0 else 1):
      name = f'case{case}_{image}.png'
      # Case 0 lives in images/, the others next to the export.
      write(tmp_path / 'images' if case == 0 else tmp_path, name, png(noise('L', seed=case)))
      export.append(
        {
          'Case_ID': f'MPX{case}',
          'filename': name,
          'Caption': f'Axial CT of case {case}',
          'Core_Modality': 'CT' if case % 2 else 'MR',
          'Location': 'Brain',
          'Plane': 'Axial',
          'Case_Diagnosis': 'Glioma',
        }
      )
      expected_groups[name] = f'MPX{case}'
  export.append({'Case_ID': 'MPX9', 'filename': 'gone.png', 'Caption': 'lost'})
  (tmp_path / 'medpix.json').write_text(json.dumps(export))
  info = prepare.prepare(
    'medpix',
    str(tmp_path / 'out'),
    input=str(tmp_path / 'medpix.json'),
    max_side=MAX_SIDE,
    val_fraction=0.3,
    test_fraction=0.3,
    max_bad_fraction=0.2,
  )
  assert info['converted'] == 10
  assert info['skipped'] == [{'id': 'gone.png', 'reason': 'missing file'}]
  assert info['labels'] == {'body_part': ['Brain'], 'modality': ['CT', 'MR'], 'plane': ['Axial']}
  by_split = all_records(tmp_path / 'out')
  assert_groups_in_one_split(by_split)
  recs = {r['id']: r for split in by_split.values() for r in split}
  assert {i: r['group'] for i, r in recs.items()} == expected_groups
  assert recs['case1_0.png']['labels'] == {'body_part': 'Brain', 'modality': 'CT', 'plane': 'Axial'}
  case0 = [s for s, rs in by_split.items() for r in rs if r['group'] == 'MPX0']
  assert len(case0) == 3 and len(set(case0)) == 1


def test_medpix_csv_without_case_column_groups_by_file_stem(tmp_path):
  write(tmp_path / 'images', 'a.jpg', jpeg(noise('RGB')))
  write_csv(tmp_path / 'export.csv', ['filename', 'Caption', 'Plane'], [['a.jpg', 'x', 'Sagittal']])
  info = prepare.prepare('medpix', str(tmp_path / 'out'), input=str(tmp_path / 'export.csv'))
  assert info['converted'] == 1 and info['labels'] == {'plane': ['Sagittal']}
  assert 'has no case column (case_id or uid), so it was split by image' in info['warnings'][0]
  (rec,) = [r for rs in all_records(tmp_path / 'out').values() for r in rs]
  assert rec['group'] == 'a' and rec['labels'] == {'plane': 'Sagittal'}
