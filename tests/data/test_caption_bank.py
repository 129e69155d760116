"""Tests of medclip_jax.data.caption_bank: caption banks read from .csv and .txt files in the
encodings spreadsheets save them in."""

import pytest

from medclip_jax.data import caption_bank
from medclip_jax.errors import UserError

CAPTIONS = ['A chest X-ray.', 'Fémur fracture of 2 × 3 cm.']


@pytest.mark.parametrize('name', ['bank.csv', 'bank.txt'])
def test_a_bank_saved_with_a_byte_order_mark_is_read(tmp_path, name):
  # Excel's "CSV UTF-8" starts the file with a byte-order mark.
  lines = (['caption'] if name.endswith('.csv') else []) + CAPTIONS
  path = tmp_path / name
  path.write_bytes(b'\xef\xbb\xbf' + '\n'.join(lines).encode('utf-8') + b'\n')
  assert caption_bank.read_bank_file(path) == CAPTIONS


@pytest.mark.parametrize('name', ['bank.csv', 'bank.txt'])
def test_a_bank_that_is_not_utf8_is_a_user_error_saying_what_to_do(tmp_path, name):
  lines = (['caption'] if name.endswith('.csv') else []) + CAPTIONS
  path = tmp_path / name
  path.write_bytes('\n'.join(lines).encode('cp1252') + b'\n')
  with pytest.raises(UserError, match=r'is not UTF-8 text .*Re-save it as UTF-8') as e:
    caption_bank.read_bank_file(path)
  assert str(path) in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('row', ['2', '2,Chest X-ray, PA view'])
def test_a_csv_bank_row_whose_cells_do_not_match_the_header_is_a_user_error(tmp_path, row):
  path = tmp_path / 'bank.csv'
  path.write_text(f'id,caption\n1,A chest X-ray.\n{row}\n3,Axial CT.\n')
  with pytest.raises(UserError, match=r'bank\.csv, line 3: the row has more or fewer cells'):
    caption_bank.read_bank_file(path)


def test_a_bank_in_another_format_is_refused_not_read_line_by_line(tmp_path):
  path = tmp_path / 'bank.jsonl'
  path.write_text('{"caption": "MRI of the knee."}\n')
  with pytest.raises(UserError, match=r'bank\.jsonl is a \.jsonl file: give a \.txt file'):
    caption_bank.read_bank_file(path)
