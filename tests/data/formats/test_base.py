"""Tests of what every real format shares (medclip_jax.data.formats.base): the conversion of
its entries into records, here the caption cells of any type that tables hold."""

import collections

import numpy as np

from medclip_jax.data.formats import base
from tests.helpers import MAX_SIDE
from tests.helpers import noise
from tests.helpers import png


def _converted(cells, unpaired=False):
  """{id: captions of its record, or the reason it was skipped} of one entry per caption
  cell, each with an image; an id's cell may be (caption, *more captions)."""
  image = png(noise('L'))
  entries = []
  for name, cell in cells.items():
    caption, *more = cell if name.startswith('several') else (cell,)
    entries.append(
      base.Entry(name, name, lambda max_side: image, caption, {}, more_captions=tuple(more))
    )
  stored_as = collections.Counter()
  out = {}
  for item in base.convert(entries, MAX_SIDE, [], stored_as, unpaired):
    if isinstance(item, base.Skipped):
      out[item.id] = item.reason
    else:
      out[item['id']] = item.get('captions', [item['caption']])
  return out


def test_caption_cells_of_any_type_give_their_captions():
  out = _converted(
    {
      'list': ['First.', ' ', 'Second.', 'First.'],
      'tuple': ('One.', ['Nested.']),
      'array': np.array(['Array one.', 'Array two.']),
      'int': 7,
      'numpy int': np.int64(12),
      'float': 1.5,
      'nan': float('nan'),
      'numpy nan': np.float64('nan'),
      'none': None,
      'empty list': [],
      'dict': {'en': 'A caption in a JSON object.'},
      'bool': True,
      'several: nan beside text': (float('nan'), 'Later.', None),
      'several: a list among texts': ('Text.', ['Listed one.', 'Listed two.']),
    }
  )
  assert out == {
    'list': ['First.', 'Second.'],
    'tuple': ['One.', 'Nested.'],
    'array': ['Array one.', 'Array two.'],
    'int': ['7'],
    'numpy int': ['12'],
    'float': ['1.5'],
    'nan': 'empty caption',
    'numpy nan': 'empty caption',
    'none': 'empty caption',
    'empty list': 'empty caption',
    'dict': 'caption is a dict, not text',
    'bool': 'caption is a bool, not text',
    'several: nan beside text': ['Later.'],
    'several: a list among texts': ['Text.', 'Listed one.', 'Listed two.'],
  }


def test_with_unpaired_a_blank_caption_cell_keeps_its_image_but_a_non_text_one_is_skipped():
  out = _converted({'nan': float('nan'), 'dict': {'en': 'x'}}, unpaired=True)
  assert out == {'nan': [''], 'dict': 'caption is a dict, not text'}


def test_csv_rows_whose_cells_do_not_line_up_with_the_header_are_bad_rows(tmp_path):
  path = tmp_path / 'm.csv'
  path.write_text(
    'image,caption,modality\n'
    'a.png,Axial CT, contrast enhanced,CT\n'  # an unquoted comma: the labels would shift
    'b.png,Normal chest,XR\n'
    'c.png,"5 mm nodule,CT\n'  # a quote left open swallows the rows after it
    'd.png,Brain MRI,MR\n'
  )
  columns, rows = base.read_table(str(path))
  assert columns == ['image', 'caption', 'modality']
  assert rows[1] == {'image': 'b.png', 'caption': 'Normal chest', 'modality': 'XR'}
  assert len(rows) == 3
  assert isinstance(rows[0], base.BadRow) and rows[0].reason.startswith('more cells')
  assert isinstance(rows[2], base.BadRow) and rows[2].reason.startswith('fewer cells')


def test_blank_and_whole_number_cells_read_as_pandas_writes_them():
  assert base.text(float('nan')) == '' and base.text(None) == ''
  assert base.text(1001.0) == '1001' and base.text(2.5) == '2.5' and base.text(7) == '7'
