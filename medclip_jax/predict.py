"""Command line: use a trained model (a training workdir or an export directory).

  python -m medclip_jax.predict embed --model=PATH (--images=DIR | --data=PREPARED_DIR --split=S) --out=INDEX
  python -m medclip_jax.predict caption --model=PATH --image=FILE [--image=...]
      (--bank=captions.txt | --bank_data=PREPARED_DIR [--bank_split=train]) [--top_k=5]
  python -m medclip_jax.predict search --model=PATH --text="MRI of the brain" (--index=INDEX | --images=DIR)
  python -m medclip_jax.predict zeroshot --model=PATH --image=FILE --classes="CT,MRI,X-ray" [--templates=...]

Readable output by default, one JSON document with --json. An index holds the
embeddings (embeddings.npy), each image's id and source (items.jsonl) and the
model they came from (index.json); searching it with another model is refused.
Images are PNG, JPEG or DICOM files (or a prepared split's records), processed
exactly as evaluation processes them. The Python API: `medclip_jax.inference`.
"""

import difflib
import json
import sys

from absl import flags

from medclip_jax import cli as command_line
from medclip_jax.errors import UserError

COMMANDS = ('embed', 'caption', 'search', 'zeroshot')


def _define_flags(flag_values=flags.FLAGS):
  """Defines the flags in `flag_values`: only when run as the command (or by a test), so that
  importing `predict` defines no flags."""
  f = flag_values
  flags.DEFINE_string('model', None, 'A training workdir or an export directory.', flag_values=f)
  flags.DEFINE_integer(
    'step', None, 'Checkpoint step of a workdir (default: the latest).', flag_values=f
  )
  flags.DEFINE_multi_string('image', [], 'An image file (repeat for several).', flag_values=f)
  flags.DEFINE_string(
    'images', None, 'A directory of PNG, JPEG or DICOM files (recursive).', flag_values=f
  )
  flags.DEFINE_string(
    'data', None, 'A prepared dataset directory (embed: with --split).', flag_values=f
  )
  flags.DEFINE_string('split', 'test', 'The split of --data.', flag_values=f)
  flags.DEFINE_string('out', None, 'embed: the index directory to write.', flag_values=f)
  flags.DEFINE_string(
    'bank', None, 'caption: a .txt (one caption a line) or .csv file.', flag_values=f
  )
  flags.DEFINE_string(
    'bank_data', None, 'caption: a prepared dataset whose captions are the bank.', flag_values=f
  )
  flags.DEFINE_string('bank_split', 'train', 'The split of --bank_data.', flag_values=f)
  flags.DEFINE_string('text', None, 'search: the query.', flag_values=f)
  flags.DEFINE_string('index', None, 'search: an index directory written by embed.', flag_values=f)
  flags.DEFINE_list('classes', None, 'zeroshot: the class names, comma-separated.', flag_values=f)
  flags.DEFINE_list(
    'templates',
    None,
    "zeroshot: prompt templates with '{}' (default: the name), comma-separated; put one that "
    'holds a comma in double quotes: --templates=\'"{} of the head, axial.",{} scan\'.',
    flag_values=f,
  )
  flags.DEFINE_integer('top_k', 5, 'How many results.', flag_values=f)
  flags.DEFINE_integer(
    'limit', 0, 'embed --data: only the first N records (0: all).', flag_values=f
  )
  flags.DEFINE_bool('json', False, 'Print one JSON document instead of text.', flag_values=f)
  for name in ('bank_data', 'bank_split', 'top_k'):  # the spellings with a dash work too
    flags.DEFINE_alias(name.replace('_', '-'), name, flag_values=f)
  flags.mark_flags_as_required(['model'], flag_values=f)


def _require(value, flag: str, command: str):
  if not value:
    raise UserError(f'predict {command} needs --{flag}; see python -m medclip_jax.predict --help.')
  return value


def _split_files(data: str, split: str, flag: str) -> list[str]:
  """The shards of a prepared split, or a UserError naming the splits `data` has."""
  from medclip_jax.data import records  # pylint: disable=import-outside-toplevel

  try:
    return records.split_files(data, split)
  except FileNotFoundError:
    pass
  try:
    info = records.read_dataset_info(data)
  except (OSError, ValueError):
    raise UserError(
      f'{data} holds no prepared dataset (no dataset_info.json); give a directory '
      'python -m medclip_jax.data.prepare wrote.'
    ) from None
  raise UserError(
    f'The prepared dataset {data} has no {split!r} split (its splits with records: '
    f'{records.splits_with_records(info)}); give one of them with --{flag}.'
  )


def split_images(data: str, split: str, limit: int = 0) -> tuple[list[bytes], list[str], list[str]]:
  """(image bytes, record ids, sources 'DIR:split:index') of a prepared split."""
  from medclip_jax.data import records  # pylint: disable=import-outside-toplevel

  if limit < 0:
    raise UserError(f'--limit={limit} is not a number of records: give 0 (all) or more.')
  rows = list(records.read_records(_split_files(data, split, 'split')))
  rows = rows[:limit] if limit else rows
  if not rows:
    raise UserError(f'The {split!r} split of {data} has no records.')
  return (
    [r['image'] for r in rows],
    [r['id'] for r in rows],
    [f'{data}:{split}:{i}' for i in range(len(rows))],
  )


def _bank(FLAGS) -> list[str] | str:
  if FLAGS.bank:
    return FLAGS.bank
  from medclip_jax.data import records  # pylint: disable=import-outside-toplevel

  data = _require(FLAGS.bank_data, 'bank or --bank_data', 'caption')
  files = _split_files(data, FLAGS.bank_split, 'bank_split')
  return [c for r in records.read_records(files) for c in records.captions(r)]


def _not_both(FLAGS, first: str, second: str, command: str) -> None:
  """A UserError where two flags that each name the command's input are both given (the
  command would use one and ignore the other)."""
  if FLAGS[first].present and FLAGS[second].present:
    raise UserError(
      f'predict {command} takes --{first} or --{second}, not both: give the one to use.'
    )


def _inputs(command: str, FLAGS, inference) -> dict:
  """What `command` works on, from its flags: checked and read before the model loads (which
  takes seconds), so that a missing flag, an empty folder or bank, a path that is no index, an
  index that could not be written or a bad template or --top_k is said at once."""
  if command == 'embed':
    _not_both(FLAGS, 'images', 'data', command)
    if FLAGS['limit'].present and not FLAGS.data:
      raise UserError('predict embed --limit applies to --data (a prepared split) only.')
    target = inference.index_target(_require(FLAGS.out, 'out', command))
    if FLAGS.data:
      images, ids, sources = split_images(FLAGS.data, FLAGS.split, FLAGS.limit)
    else:
      images = [str(p) for p in inference.image_files(_require(FLAGS.images, 'images', command))]
      ids = sources = images
    return {'out': target, 'images': images, 'ids': ids, 'sources': sources}
  if command in ('caption', 'search'):
    inference.check_top_k(FLAGS.top_k)
  if command == 'caption':
    _not_both(FLAGS, 'bank', 'bank_data', command)
    names = list(_require(FLAGS.image, 'image', command))
    return {'names': names, 'bank': inference.read_bank(_bank(FLAGS))}
  if command == 'search':
    text = _require(FLAGS.text, 'text', command)
    _not_both(FLAGS, 'index', 'images', command)
    if FLAGS.index:
      return {'text': text, 'index': inference.Index.load(FLAGS.index)}
    folder = _require(FLAGS.images, 'index or --images', command)
    return {'text': text, 'images': [str(p) for p in inference.image_files(folder)]}
  return {
    'names': list(_require(FLAGS.image, 'image', command)),
    'classes': inference.check_classes(_require(FLAGS.classes, 'classes', command)),
    'templates': inference.check_templates(FLAGS.templates),
  }


def _left_out(unreadable: list, sources: list):
  """Records (and says on stderr) each image an index leaves out because it cannot be read."""

  def record(position: int, error) -> None:
    unreadable.append({'image': sources[position], 'reason': str(error)})
    print(f'skipped: {error}', file=sys.stderr)

  return record


def run(command: str, FLAGS) -> dict:
  """Runs one command; returns what it prints, as a JSON-able dict."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  from medclip_jax import inference  # pylint: disable=import-outside-toplevel

  given = _inputs(command, FLAGS, inference)
  model = inference.MedCLIP.load(FLAGS.model, FLAGS.step)
  out = {'model': model.describe()}
  if command == 'embed':
    images, unreadable = given['images'], []
    with tqdm(total=len(images), unit='image', file=sys.stderr, disable=None) as bar:
      index = model.index(
        images,
        given['ids'],
        given['sources'],
        progress=lambda done, _: bar.update(done - bar.n),
        on_unreadable=_left_out(unreadable, given['sources']),
      )
    out.update(index=str(index.save(given['out'])), count=len(index.ids))
    out['unreadable'] = unreadable
  elif command == 'caption':
    captions = model.caption(given['names'], given['bank'], FLAGS.top_k)
    out['images'] = [
      {'image': n, 'captions': [{'caption': c, 'similarity': s} for c, s in found]}
      for n, found in zip(given['names'], captions)
    ]
  elif command == 'search':
    unreadable = []
    index = given.get('index') or model.index(
      given['images'], on_unreadable=_left_out(unreadable, given.get('images'))
    )
    out['unreadable'] = unreadable
    found = model.search(given['text'], index, FLAGS.top_k)
    out.update(
      text=given['text'], results=[{'id': i, 'source': s, 'similarity': v} for i, s, v in found]
    )
  else:
    classes = given['classes']
    probabilities = model.zero_shot(given['names'], classes, given['templates'])
    out['images'] = [
      {'image': n, 'probabilities': dict(zip(classes, map(float, p)))}
      for n, p in zip(given['names'], probabilities)
    ]
  return out


def format_text(command: str, out: dict) -> str:
  """The readable form of `run`'s result."""
  lines = [f'model: {out["model"]}']
  if out.get('unreadable'):
    lines.append(f'left out {len(out["unreadable"])} unreadable images (said above)')
  if command == 'embed':
    lines.append(f'wrote {out["count"]} image embeddings to {out["index"]}')
  elif command == 'caption':
    for item in out['images']:
      lines.append(item['image'])
      lines += [f'  {c["similarity"]:.3f}  {c["caption"]}' for c in item['captions']]
  elif command == 'search':
    lines.append(f'images nearest {out["text"]!r}:')
    for r in out['results']:
      source = f'  ({r["source"]})' if r['source'] not in ('', r['id']) else ''
      lines.append(f'  {r["similarity"]:.3f}  {r["id"]}{source}')
  else:
    for item in out['images']:
      ranked = sorted(item['probabilities'].items(), key=lambda kv: -kv[1])
      lines.append(item['image'] + ': ' + ', '.join(f'{c} {p:.3f}' for c, p in ranked))
  return '\n'.join(lines)


def cli(argv, flag_values) -> int:
  """Runs the command `argv[1]` with parsed `flag_values`; prints; returns the exit status."""
  command = argv[1] if len(argv) == 2 else None
  try:
    if command not in COMMANDS:
      near = difflib.get_close_matches(str(command), COMMANDS, n=1)
      raise UserError(
        f'predict takes one command, one of {", ".join(COMMANDS)}; got {" ".join(argv[1:]) or "none"}'
        + (f' (did you mean {near[0]}?)' if near else '')
        + '. See python -m medclip_jax.predict --help.'
      )
    out = run(command, flag_values)
  except UserError as e:
    print(f'\nerror: {e}\n', file=sys.stderr)
    return 2
  print(
    json.dumps(out, indent=2, ensure_ascii=False) if flag_values.json else format_text(command, out)
  )
  return 0


def main(argv):
  sys.exit(cli(argv, flags.FLAGS))


def console_main() -> None:
  """The installed command's entry point (pyproject.toml's [project.scripts])."""
  _define_flags()
  command_line.run(main)


if __name__ == '__main__':
  console_main()
