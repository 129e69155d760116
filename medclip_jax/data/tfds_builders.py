r"""Optional TFDS builders for the prepare formats, and a grain source over what they build.

Needs tensorflow-datasets (`pip install tensorflow-datasets==4.9.10`), not TensorFlow, to build
and to read; importing this module defines no flags. Put a dataset's files in a manual directory
and build it, e.g. a manifest CSV with its images:

    python -m medclip_jax.data.tfds_builders --format=manifest --manual_dir=DIR \
        --output=TFDS_DIR --config_name=ct --input=manifest.csv \
        [--label_columns=modality --group_column=patient ...]

then read it with `tfds.data_source('medclip_manifest/ct', data_dir=TFDS_DIR)`, or train on it
through `RecordSource`. The other flags are prepare's (`python -m medclip_jax.data.prepare
--help`); its path flags (--input, --images, --captions) are relative to DIR, and --input
defaults to DIR. Builds with options need a --config_name; the 'default' config uses the
format's default options. A name already built in --output is reused only if that build was
made from the same directory and options (its metadata's 'build'); otherwise it is refused.
(TFDS's own `tfds build` command imports TensorFlow at start-up.)

There is one builder per real format of medclip_jax.data.formats: medclip_manifest,
medclip_medpix, medclip_roco, medclip_pubmedvision, medclip_reports and medclip_dicom. A
builder runs `prepare` on the manual directory, so its records, splits and skipped inputs are
exactly prepare's (and, like prepare, it fails when more than max_bad_fraction of the inputs are
bad). Examples are {'id', 'group', 'caption', 'more_captions' (an image's other captions),
'image' (prepare's PNG), 'labels' ({'name': [...], 'value': [...]})}, in array_record files; the dataset's metadata holds prepare's dataset info
(skipped inputs included).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl import logging

from medclip_jax import errors
from medclip_jax.data import records
from medclip_jax.data.formats import FORMATS
from medclip_jax.data.formats.base import OptionError

_PATH_OPTIONS = ('input', 'images', 'captions')


@dataclasses.dataclass(eq=False)
class FormatConfig(tfds.core.BuilderConfig):
  """A build of one format: `options` are its prepare flags, by name."""

  options: dict = dataclasses.field(default_factory=dict)


class _FormatBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds one prepare format from the manual directory (see the module docstring)."""

  FORMAT = ''
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': "'more_captions': an image's other captions."}
  BUILDER_CONFIGS = [FormatConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put the dataset files in the manual directory; the config options name them relative to it '
    '(see medclip_jax.data.tfds_builders).'
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'The {self.FORMAT} format of medclip_jax.data.prepare.',
      features=tfds.features.FeaturesDict(
        {
          'id': tfds.features.Text(),
          'group': tfds.features.Text(),
          'caption': tfds.features.Text(),
          # The other captions of an image that has several (none for most).
          'more_captions': tfds.features.Sequence(tfds.features.Text()),
          # Prepare's PNG (grayscale or RGB) as is; read as [H, W, 3] unless not decoded.
          'image': tfds.features.Image(encoding_format='png'),
          # Label names vary by format and options: (name, value) pairs.
          'labels': tfds.features.Sequence(
            {'name': tfds.features.Text(), 'value': tfds.features.Text()}
          ),
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    options = dict(self.builder_config.options)
    self.info.metadata['build'] = build_record(manual_dir, options)
    options['input'] = options.get('input') or '.'
    for name in _PATH_OPTIONS:
      if options.get(name):
        options[name] = os.path.normpath(os.path.join(manual_dir, options[name]))
    # Imported to build only: prepare defines its command's flags. It writes each split once;
    # the TemporaryDirectory lives until the split generators finish.
    from medclip_jax.data import prepare  # pylint: disable=import-outside-toplevel

    work = tempfile.TemporaryDirectory(prefix='medclip_tfds_')
    info = prepare.prepare(self.FORMAT, work.name, num_shards=1, **options)
    for item in info['skipped']:
      logging.warning('%s: skipped %r: %s', self.name, item['id'], item['reason'])
    # Prepare's split entries (counts of records, captions and kinds) less its shard files.
    splits = {
      split: {k: v for k, v in entry.items() if k != 'files'}
      for split, entry in info['splits'].items()
    }
    self.info.metadata.update({**info, 'splits': splits})
    return {
      split: self._generate_examples(work, split)
      for split, entry in splits.items()
      if entry['count']
    }

  def _generate_examples(self, work, split):
    for record in records.read_records(records.split_files(work.name, split)):
      labels = record['labels']
      yield (
        record['id'],
        {
          'id': record['id'],
          'group': record['group'],
          'caption': record['caption'],
          'more_captions': records.captions(record)[1:],
          'image': record['image'],
          'labels': {'name': list(labels), 'value': list(labels.values())},
        },
      )


def _builder_class(format_name: str) -> type[_FormatBuilder]:
  return type(f'Medclip{format_name.capitalize()}', (_FormatBuilder,), {'FORMAT': format_name})


BUILDERS = {name: _builder_class(name) for name in FORMATS if name != 'synthetic'}


def build_record(manual_dir: str, options: dict) -> dict:
  """What a build was made from (its manual directory and options), as its metadata keeps it."""
  return json.loads(json.dumps({'manual_dir': os.path.abspath(manual_dir), 'options': options}))


def build(
  format: str,  # pylint: disable=redefined-builtin
  manual_dir: str,
  data_dir: str,
  config_name: str = 'default',
  **options,
) -> tfds.core.DatasetBuilder:
  """Builds `format` from `manual_dir` into `data_dir` as ArrayRecord; returns the builder.

  `options` are the format's prepare options, stored as config `config_name`; raises
  OptionError for options under the name 'default' (the build with default options), and what
  prepare raises.
  """
  if config_name == 'default' and options:
    raise OptionError(
      f'A build with options needs a config name other than "default", e.g. {format}_custom.'
    )
  if not os.path.isdir(manual_dir):
    raise OptionError(f'--manual_dir={manual_dir} is not a directory: give the dataset files.')
  config = 'default' if config_name == 'default' else FormatConfig(config_name, options=options)
  built = BUILDERS[format](config=config, data_dir=data_dir, file_format='array_record')
  # TFDS reuses a build of the same name as it is; one of other files or options is refused.
  made_from = built.info.metadata.get('build') if built.is_prepared() else None
  if made_from and made_from != build_record(manual_dir, options):
    raise OptionError(
      f'{data_dir} already holds a build named {config_name!r} of {made_from}, not of '
      f'{build_record(manual_dir, options)}: give another --config_name, or remove '
      f'{built.data_path} to build it again.'
    )
  built.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return built


def to_record(example: dict) -> dict:
  """A TFDS example (read with the image not decoded) as a medclip_jax record."""

  def text(value) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)

  labels = example['labels']
  record = {
    'id': text(example['id']),
    'group': text(example['group']),
    'image': bytes(example['image']),
    'caption': text(example['caption']),
    'labels': {text(k): text(v) for k, v in zip(labels['name'], labels['value'], strict=True)},
  }
  more = [text(c) for c in example.get('more_captions', ())]
  if more:
    record['captions'] = [record['caption'], *more]
  return record


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The built dataset `name` ('medclip_manifest/ct') in `data_dir` (TFDS's default if None)."""
  return tfds.builder(name, data_dir=data_dir)


def dataset_info(name: str, data_dir: str | None = None) -> dict:
  """Prepare's dataset info (see records.write_dataset_info) of a built dataset."""
  return dict(builder(name, data_dir).info.metadata)


class RecordSource:
  """One split of a built dataset as serialised records: what pipeline.Preprocess reads.

  A grain random-access data source: `grain.MapDataset.source(RecordSource(...))`.
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    self.name, self.split, self.data_dir = name, split, data_dir
    built = builder(name, data_dir)
    # Builds leave empty splits out; reading one gives no records, as with prepared shards.
    self._source = (
      built.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
      if split in built.info.splits
      else []
    )

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    return records.encode(to_record(self._source[index]))

  def __repr__(self) -> str:
    return f'RecordSource({self.name!r}, {self.split!r}, data_dir={self.data_dir!r})'


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.format not in BUILDERS:
    sys.exit(f'tfds_builders: unknown --format={FLAGS.format!r}; known: {", ".join(BUILDERS)}')
  names = inspect.signature(FORMATS[FLAGS.format]).parameters
  options = {name: FLAGS[name].value for name in names if name in FLAGS and FLAGS[name].present}
  start = time.time()
  try:
    built = build(FLAGS.format, FLAGS.manual_dir, FLAGS.output, FLAGS.config_name, **options)
  except (OptionError, errors.UserError) as e:
    sys.exit(f'tfds_builders: {e}')
  counts = ', '.join(f'{split} {info.num_examples}' for split, info in built.info.splits.items())
  print(
    f'Wrote {built.name}/{FLAGS.config_name} to {built.data_path}: {counts}; '
    f'{len(built.info.metadata["skipped"])} skipped; {time.time() - start:.1f} s.'
  )


if __name__ == '__main__':
  # The command's flags are prepare's and these; defined here, so that reading a built dataset
  # (as training does) defines no flags.
  from medclip_jax.data import prepare  # noqa: F401  pylint: disable=unused-import

  flags.DEFINE_string('manual_dir', None, 'The dataset files; path flags are relative to it.')
  flags.DEFINE_string(
    'config_name',
    'default',
    'The name of this build (its options) in --output; read it as medclip_FORMAT/NAME.',
  )
  flags.mark_flags_as_required(['manual_dir'])
  app.run(main)
