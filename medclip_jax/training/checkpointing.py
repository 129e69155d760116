"""Orbax checkpoints: train state, data iterator, its dataset and config saved together.

One checkpoint is a directory `WORKDIR/checkpoints/<step>/` with four items:
  state     the TrainState pytree (params, batch_stats, opt_state, step, rng),
            written by every process for its own shards;
  data      the grain iterator position of each process (one JSON per process),
            so a resumed run sees exactly the batches it would have seen;
  dataset   the splits that position indexes into, their images' stored size and
            the tokenizer's vocabulary digest (`pipeline.training_data`), so a resume
            on other data is refused and the model reads its inputs as it trained,
            even where the data is gone;
  config    the run's config as JSON, so exports know what they convert.
Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.

Once a save is complete, each process records the size and CRC32 of the files
it wrote in `<step>/checksums.process_<i>.json`, checked before a restore, so
that a truncated or overwritten file is named. A checkpoint that cannot be
read (such a file, unreadable metadata, a missing item) raises
`CorruptCheckpoint`, and the trainer falls back to the newest
readable one; one that is readable but does not fit the config raises the
`UserError` that says so. A save that fails (a full disk) raises a `UserError`
naming the checkpoint that is still intact.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path

from absl import logging as absl_logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from medclip_jax.data import pipeline
from medclip_jax.errors import UserError
from medclip_jax import objectives as objectives_lib
from medclip_jax.training import optimizer as optimizer_lib


# TrainState fields added since checkpoints were first written, with the value
# an older checkpoint restores them with.
ADDED_FIELDS = {'skipped': lambda: np.zeros((), np.int32)}


class CorruptCheckpoint(Exception):
  """A checkpoint that cannot be read; `path` and `reason` say which and why."""

  def __init__(self, path, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = Path(path), reason


class Checkpointer:
  """Saves and restores training checkpoints under `WORKDIR/checkpoints`."""

  def __init__(self, workdir: str, keep: int, create: bool = True):
    """`create=False` for reading only: a missing directory is not made."""
    self.directory = Path(workdir).absolute() / 'checkpoints'
    _split_replicated_writes_only_across_tpu_hosts()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
      # Named up front so that a checkpoint's metadata can be read before restoring it.
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'data': grain.checkpoint.CheckpointHandler(),
        'dataset': ocp.JsonCheckpointHandler(),
        'config': ocp.JsonCheckpointHandler(),
      },
    )
    self._saving = None  # the step of the save in flight

  def path(self, step: int) -> Path:
    return self.directory / str(step)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, config, dataset: dict) -> None:
    """Starts an asynchronous save; training continues while it is written. `dataset`
    describes the data `data_iterator` reads (`pipeline.training_data`).

    Raises `UserError` if this save or the one before it failed.
    """
    self.wait()  # a failure of the previous save is reported as that step's
    self._saving = step
    with self._explain_failure(step):
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          dataset=ocp.args.JsonSave(dataset),
          config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ),
      )

  @contextlib.contextmanager
  def _explain_failure(self, step: int):
    """Turns a failed write (a full disk, lost permissions) into a `UserError`."""
    try:
      yield
    except (KeyboardInterrupt, UserError):
      raise
    except Exception as error:  # pylint: disable=broad-except (whatever the file system raised)
      intact = [s for s in self._manager.all_steps() if s != step]
      kept = (
        f'the checkpoint at step {max(intact)} is intact' if intact else 'none was written before'
      )
      raise UserError(
        f'Writing the checkpoint at step {step} to {self.directory} failed '
        f'({type(error).__name__}: {error}); {kept}. Free disk space or fix the '
        'permissions, then rerun the same command to resume.'
      ) from error

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into the shapes and shardings of `abstract_state`.

    The state is resharded as needed, so a checkpoint written by N processes
    restores on M. `data_iterator` is moved to the saved position in place.
    Raises `CorruptCheckpoint` if the checkpoint cannot be read and `UserError`
    if it does not fit `abstract_state`.
    """
    state = self.restore_state(step, abstract_state)
    self._restore_data_position(step, data_iterator)
    return state

  def _saved_tree(self, step: int) -> dict:
    """{path: (shape, dtype)} of the state saved at `step`, from its metadata alone."""
    path = self.directory / str(step) / 'state'
    try:
      tree = self._manager.item_metadata(step)['state'].tree
    except Exception as e:  # pylint: disable=broad-except (any unreadable metadata)
      raise CorruptCheckpoint(path, f'its metadata cannot be read ({type(e).__name__}: {e})') from e
    if not tree:
      raise CorruptCheckpoint(path, 'it holds no train state')
    return _shapes_by_path(tree)

  def _check_fits(self, step: int, saved: dict, target) -> None:
    expected = _shapes_by_path(target)
    if saved == expected:
      return
    differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    listing = '; '.join(
      f'{k}: saved {_describe(saved.get(k))}, config {_describe(expected.get(k))}'
      for k in differ[:5]
    )
    more = f' (and {len(differ) - 5} more)' if len(differ) > 5 else ''
    raise UserError(
      f'The checkpoint at {self.directory / str(step)} does not fit the model and optimizer '
      'of this config (was the config changed since it was written?): '
      f'{listing}{more}. Use a fresh --workdir for a different model, or restore the config '
      'the checkpoint was trained with.'
    )

  def _restore_data_position(self, step: int, data_iterator) -> None:
    # Each process saved its own iterator state. Every process's position is
    # the same global batch index (see data/pipeline.py), so when the process
    # count changed, any saved file gives the position.
    data_dir = self.directory / str(step) / 'data'
    index, count = jax.process_index(), jax.process_count()
    own = data_dir / f'process_{index}-of-{count}.json'
    saved = [own] if own.exists() else sorted(data_dir.glob('process_*-of-*.json'))
    if not saved:
      raise CorruptCheckpoint(data_dir, 'it has no data-iterator position')
    try:
      data_iterator.set_state(json.loads(saved[0].read_text()))
    except (ValueError, KeyError, TypeError) as e:
      raise CorruptCheckpoint(saved[0], f'the data position cannot be read ({e})') from e

  def restore_config(self, step: int) -> dict:
    """The config saved with `step`, as a dict in today's layout (see `upgrade_config`);
    `CorruptCheckpoint` if it is missing or cannot be read."""
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except (ValueError, KeyError, OSError) as e:  # unparsable JSON, no config item, no file
      raise CorruptCheckpoint(
        self.directory / str(step) / 'config', f'the saved config cannot be read ({e})'
      ) from e
    return upgrade_config(saved['config'])

  def restore_dataset(self, step: int) -> dict | None:
    """The training data `step` was saved with (`pipeline.training_data`); None for a
    checkpoint written before it was recorded. `CorruptCheckpoint` if it cannot be read."""
    if not (self.directory / str(step) / 'dataset').is_dir():
      return None
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(dataset=ocp.args.JsonRestore()))
    except (ValueError, KeyError, OSError) as e:
      raise CorruptCheckpoint(
        self.directory / str(step) / 'dataset', f'the saved data description cannot be read ({e})'
      ) from e
    return saved['dataset']

  def restore_state(self, step: int, abstract_state):
    """Only the train state of `step` (e.g. for export; no data iterator).

    Fields added to the state since the checkpoint was written (`ADDED_FIELDS`)
    take their initial values.
    """
    verify_checksums(self.directory / str(step))
    saved = self._saved_tree(step)
    top = {path.split('/')[0] for path in saved}
    added = [f for f in ADDED_FIELDS if f not in top]
    fields = {f.name for f in dataclasses.fields(abstract_state)} - set(added)
    target = {f: getattr(abstract_state, f) for f in sorted(fields)}
    self._check_fits(step, saved, target)
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )['state']
    except Exception as e:  # pylint: disable=broad-except (TensorStore raises plain Exception)
      reason = str(e).split('See full TensorStore details')[0].strip()
      raise CorruptCheckpoint(
        self.directory / str(step), f'its arrays cannot be read ({type(e).__name__}: {reason})'
      ) from e
    for name in added:
      like = getattr(abstract_state, name)
      value = ADDED_FIELDS[name]()
      restored[name] = jax.device_put(value, like.sharding) if like.sharding else value
    return abstract_state.replace(**restored)

  def set_aside(self, step: int) -> Path:
    """Moves an unreadable checkpoint out of the way (to WORKDIR/corrupt_checkpoints/),
    so that training can write that step again; process 0 moves, every process waits."""
    destination = self.directory.parent / 'corrupt_checkpoints' / f'{step}-{int(time.time())}'
    if jax.process_index() == 0:
      destination.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self._manager.reload()
    return destination

  def restore_variables(self, step: int, abstract_variables: dict) -> dict:
    """Only {'params', 'batch_stats'} of `step`'s train state, as NumPy arrays: the optimizer
    state (twice the parameters' size under AdamW) is not read. For using a trained model.

    Raises `CorruptCheckpoint` as `restore_state` does: a damaged file would otherwise give
    a model that answers NaN or nonsense without any error."""
    verify_checksums(self.directory / str(step))
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_variables)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as checkpointer:
      try:
        return checkpointer.restore(
          self.directory / str(step) / 'state',
          args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
      except Exception as e:  # pylint: disable=broad-except (TensorStore raises plain Exception)
        reason = str(e).split('See full TensorStore details')[0].strip()
        raise CorruptCheckpoint(
          self.directory / str(step), f'its arrays cannot be read ({type(e).__name__}: {reason})'
        ) from e

  def wait(self) -> None:
    """Blocks until the save in flight is written; `UserError` if it failed."""
    step, self._saving = self._saving, None
    if step is not None:
      with self._explain_failure(step):
        self._manager.wait_until_finished()
        write_checksums(self.directory / str(step))

  def close(self) -> None:
    self._manager.close()


# A file beside the items, not a directory: Orbax takes each directory for an item.
CHECKSUMS = 'checksums.process_{}.json'


def _split_replicated_writes_only_across_tpu_hosts() -> None:
  """Sets whether Orbax splits the writing of each replicated shard among its replicas.

  Splitting spreads a save over the hosts of a TPU pod. Everywhere else it is
  off: in one process, that process writes every replica anyway; Orbax turns it
  off on GPUs itself (when JAX_PLATFORMS names them); and on CPU it costs one
  compiled slice per array shape and device at the first save (168 in the tests'
  8-device runs, a 6 s stall before step 2; BENCHMARKS.md).
  """
  split = jax.process_count() > 1 and jax.default_backend() == 'tpu'
  registered = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(registered, '_use_replica_parallel', split) == split:
    return
  handler = ocp.type_handlers.ArrayHandler(
    use_replica_parallel=split,
    # Orbax's default handler records per-array metadata; keep writing it.
    array_metadata_store=getattr(registered, '_array_metadata_store', None),
  )
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # not Orbax's warning that it was overridden
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logging.set_verbosity(verbosity)


def _files_of(step_dir: Path, index: int, count: int) -> dict:
  """{relative path: path} of the files process `index` of `count` wrote (or, for a
  restore with another process count, is to check): those named after its process
  index; process 0 also has the shared ones."""
  out = {}
  for path in sorted(step_dir.rglob('*')):
    relative = path.relative_to(step_dir)
    if path.is_file() and not relative.parts[0].startswith('checksums.'):
      owner = re.search(r'process_(\d+)', str(relative))
      if (int(owner.group(1)) if owner else 0) % count == index:
        out[str(relative)] = path
  return out


def _crc32(path: Path) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def write_checksums(step_dir: Path) -> None:
  """Records {file: [size, crc32]} of this process's files of a complete checkpoint."""
  if not step_dir.is_dir():
    return
  index = jax.process_index()
  files = _files_of(step_dir, index, jax.process_count())
  sums = {name: [path.stat().st_size, _crc32(path)] for name, path in files.items()}
  out = step_dir / CHECKSUMS.format(index)
  partial = out.with_suffix('.partial')
  partial.write_text(json.dumps(sums))
  os.replace(partial, out)  # a kill while writing leaves no half-written list


def verify_checksums(step_dir: Path) -> None:
  """Raises `CorruptCheckpoint` naming the first file whose size or CRC32 changed since it
  was written. Each process checks the lists of the processes it stands for; checkpoints
  without lists (older ones) pass."""
  index, count = jax.process_index(), jax.process_count()
  for listing in sorted(step_dir.glob(CHECKSUMS.format('*'))):
    writer = int(listing.name.split('_')[1].split('.')[0])
    if writer % count != index:
      continue
    try:
      sums = json.loads(listing.read_text())
    except ValueError as e:
      raise CorruptCheckpoint(listing, f'the checksum list cannot be read ({e})') from e
    for name, (size, crc) in sums.items():
      path = step_dir / name
      if not path.is_file():
        raise CorruptCheckpoint(path, 'the file is missing')
      actual = path.stat().st_size
      if actual != size:
        raise CorruptCheckpoint(path, f'{actual} bytes where {size} were written (truncated?)')
      if _crc32(path) != crc:
        raise CorruptCheckpoint(path, 'its contents changed since it was written (CRC32 differs)')


def _shapes_by_path(tree) -> dict:
  """{'params/text_encoder/.../kernel': (shape, dtype)} of a state or its saved metadata.

  Keys are spelled alike for both: a dataclass field or namedtuple field by its
  name, a sequence entry by its index.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]
    out['/'.join(names)] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
  return out


def _describe(entry) -> str:
  return 'nothing' if entry is None else f'{entry[1]}{list(entry[0])}'


def abstract_like(state, shardings):
  """ShapeDtypeStructs with shardings: the restore target for `state`."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def upgrade_config(config: dict) -> dict:
  """A saved config in today's layout: the state it describes is unchanged.

  Checkpoints written before objectives and evaluators were data name the
  loss in `model.loss` and the evaluation in `eval.zeroshot`,
  `eval.class_names` and `eval.retrieval_ks`, and have no
  `train.param_groups`; those become `objectives`, `evals` and the default
  groups (which the old fixed groups were). Configs saved before the
  non-finite guard get its default `train.max_nonfinite_in_a_row`.
  """
  config = json.loads(json.dumps(config))  # a copy
  if 'objectives' not in config:
    config['objectives'] = {config['model'].pop('loss', 'infonce'): 1.0}
  if 'evals' not in config:
    old = config['eval']
    config['evals'] = {
      'retrieval': {'type': 'retrieval', 'ks': old.pop('retrieval_ks', [1, 5, 10])},
      'zeroshot': {
        'type': 'zeroshot',
        'templates': old.pop('zeroshot', {}),
        'class_names': old.pop('class_names', {}),
      },
    }
  config['train'].setdefault('param_groups', dict(optimizer_lib.DEFAULT_PARAM_GROUPS))
  config['train'].setdefault('max_nonfinite_in_a_row', 10)  # added with the non-finite guard
  config['eval'].setdefault('every_split', 'val')  # periodic evaluations used eval.split before
  config['model']['image'].setdefault('ops', 'auto')  # the same parameters either way
  config['model']['image'].setdefault('dtype', '')  # per-tower dtype; '' follows model.dtype
  config['model']['text'].setdefault('dtype', '')
  config['model']['image'].setdefault('remat', 'none')  # the same parameters either way
  config['model']['text'].setdefault('remat', 'none')
  config['train'].setdefault('cache_locked_text', False)
  config['train'].setdefault('grad_cache_chunks', 0)  # the plain gradient
  # MMCLIP's objectives came later: absent means off, with today's settings.
  for name, defaults in objectives_lib.settings_defaults().items():
    config['objectives'].setdefault(name, 0.0)
    config.setdefault(name, dict(defaults))
  config['train']['param_groups'].setdefault(
    'decoders', optimizer_lib.DEFAULT_PARAM_GROUPS['decoders']
  )
  config['data'].setdefault('unpaired', dict(pipeline.UNPAIRED_DEFAULTS))
  return config
