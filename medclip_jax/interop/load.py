"""A trained model from a training workdir or an export directory: its config and variables.

The evaluation command (and any use of a trained model) starts here, so that a
workdir and what `python -m medclip_jax.export` wrote from it give the same
model. Only the variables are read (no optimizer state); they come back as NumPy
arrays on the host, for the caller to place on its devices.
"""

import dataclasses
import json
from pathlib import Path

import ml_collections
import numpy as np

from medclip_jax.data import images
from medclip_jax.data import ingest
from medclip_jax.data import tokenizer
from medclip_jax.errors import UserError
from medclip_jax.interop import convert
from medclip_jax.interop import tables
from medclip_jax.training import checkpointing
from medclip_jax.training import setup as setup_lib


@dataclasses.dataclass(frozen=True)
class Loaded:
  config: ml_collections.ConfigDict  # the run's config, in today's layout
  variables: dict  # {'params', 'batch_stats'} as NumPy; params include the objectives' (logit_bias)
  step: int
  path: Path
  kind: str  # 'workdir' or 'export'
  max_side: int  # prepare's --max_side for the training images: inputs are read at it too

  def describe(self) -> str:
    return f'{self.path} ({self.kind}, step {self.step})'


def load(path, step: int | None = None, decoders: bool = False) -> Loaded:
  """The model in `path`: a training workdir (latest checkpoint, or `step`) or an export.

  A workdir gives what its export would hold (towers, projections, logit scale and
  bias); with `decoders` also the parameters only training uses (MMCLIP's decoders,
  which `config.init_from` carries over when a workdir has them).
  """
  path = Path(path)
  if (path / tables.EXPORT_FILES['metadata']).is_file():
    return _from_export(path, step)
  if (path / 'checkpoints').is_dir():
    return from_workdir(path, step, decoders)
  raise UserError(
    f'{path} is neither a training workdir (it would hold checkpoints/<step>/) nor an export '
    f'directory (it would hold {tables.EXPORT_FILES["metadata"]}, written by python -m '
    'medclip_jax.export). Give the directory a training run wrote (its --workdir), or an '
    'export directory.'
  )


def newest_step(path) -> int | None:
  """The step `load(path)` would load (an export's own; a workdir's newest), without loading it;
  None where there is none."""
  path = Path(path)
  metadata = path / tables.EXPORT_FILES['metadata']
  if metadata.is_file():
    return json.loads(metadata.read_text()).get('step')
  if not (path / 'checkpoints').is_dir():
    return None
  checkpointer = checkpointing.Checkpointer(str(path), keep=1_000_000, create=False)
  try:
    return max(checkpointer.all_steps(), default=None)
  finally:
    checkpointer.close()


def from_workdir(path, step: int | None = None, decoders: bool = False) -> Loaded:
  """The model of a training workdir's checkpoint `step` (default: the latest); see `load`."""
  path = Path(path)
  checkpointer = checkpointing.Checkpointer(str(path), keep=1_000_000, create=False)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise UserError(
        f'No checkpoints in {checkpointer.directory}: give the directory a training run wrote '
        '(it holds checkpoints/<step>/) once it has saved one.'
      )
    step = max(steps) if step is None else step
    if step not in steps:
      raise UserError(
        f'No checkpoint for step {step} in {checkpointer.directory}; there are {steps}.'
      )
    try:
      config = ml_collections.ConfigDict(checkpointer.restore_config(step))
      wanted = setup_lib.shapes(config).abstract_state.variables()
      if not decoders:  # the rest is not read (Orbax restores part of a tree)
        wanted['params'] = {
          k: v for k, v in wanted['params'].items() if k in tables.EXPORTED_PARAMS
        }
      variables = checkpointer.restore_variables(step, wanted)
      trained_on = checkpointer.restore_dataset(step)
    except checkpointing.CorruptCheckpoint as e:
      older = [s for s in steps if s < step]
      raise UserError(
        f'The checkpoint at step {step} in {checkpointer.directory} is damaged: {e.path}: '
        f'{e.reason}. '
        + (
          f'Give --step={max(older)} to use the one before it (the workdir has {steps}); '
          if older
          else 'The workdir has no older checkpoint; '
        )
        + 'rerunning the training command sets a damaged checkpoint aside and resumes from '
        'the newest readable one.'
      ) from e
  finally:
    checkpointer.close()
  kept = path / tokenizer.WORKDIR_COPY
  if kept.is_dir() and not tokenizer.resolve(config.data.tokenizer).exists():
    config.data.tokenizer = str(kept)  # the directory has moved since: the run's copy
  # Recorded with the checkpoint since it was; older ones look it up in their dataset.
  max_side = trained_on['max_side'] if trained_on else images.prepared_max_side(config.data)
  return Loaded(config, variables, step, path, 'workdir', max_side)


def _from_export(path: Path, step: int | None) -> Loaded:
  metadata_file = path / tables.EXPORT_FILES['metadata']
  try:
    metadata = json.loads(metadata_file.read_text())
  except ValueError as e:
    metadata, problem = {}, f'it is not JSON ({e})'
  else:
    wanted = ('step', 'config', 'image')
    missing = [k for k in wanted if k not in metadata] if isinstance(metadata, dict) else wanted
    problem = f'it lacks {", ".join(missing)}' if missing else ''
  if problem:
    raise UserError(
      f'{metadata_file} cannot be read: {problem}. The export is damaged: export the training '
      'workdir again (python -m medclip_jax.export --workdir=... --out=...).'
    )
  if step is not None and step != metadata['step']:
    raise UserError(f'{path} is an export of step {metadata["step"]}, not of step {step}.')
  config = ml_collections.ConfigDict(checkpointing.upgrade_config(metadata['config']))
  text_dir = path / tables.EXPORT_FILES['text_encoder']
  config.data.tokenizer = str(text_dir)  # the export carries its tokenizer
  abstract = setup_lib.shapes(config).abstract_state
  params, batch_stats = {}, {}
  params['image_encoder'], batch_stats['image_encoder'] = convert.resnet_from_torchvision(
    convert.read_tensors(path / tables.EXPORT_FILES['image_encoder']),
    abstract.params['image_encoder'],
    abstract.batch_stats['image_encoder'],
  )
  params['text_encoder'] = convert.bert_from_hf(
    convert.read_tensors(text_dir / tables.HF_WEIGHT_FILES[0]), abstract.params['text_encoder']
  )
  heads_file = path / tables.EXPORT_FILES['heads']
  heads = convert.read_tensors(heads_file)
  for key, name in tables.HEADS.items():
    if key not in abstract.params:
      continue
    if name not in heads:
      raise UserError(f'{heads_file} has no {name}: the export is damaged; export it again.')
    value = heads[name]
    # Projections were written as torch's [out, in] Linear weights; scalars with shape (1,).
    params[key] = {'kernel': value.T} if value.ndim == 2 else np.asarray(value.reshape(()))
  variables = {'params': params, 'batch_stats': batch_stats}
  max_side = metadata['image'].get('max_side', ingest.DEFAULT_MAX_SIDE)  # older exports lack it
  return Loaded(config, variables, metadata['step'], path, 'export', max_side)
