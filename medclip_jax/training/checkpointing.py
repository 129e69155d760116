"""Orbax checkpoints: train state, data iterator and config saved together.

One checkpoint is a directory `WORKDIR/checkpoints/<step>/` with three items:
  state     the TrainState pytree (params, batch_stats, opt_state, step, rng),
            written by every process for its own shards;
  data      the grain iterator position of each process (one JSON per process),
            so a resumed run sees exactly the batches it would have seen;
  config    the run's config as JSON, so exports know what they convert.
Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

import json
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from medclip_jax.errors import UserError
from medclip_jax.training import optimizer as optimizer_lib


class Checkpointer:
  """Saves and restores training checkpoints under `WORKDIR/checkpoints`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = Path(workdir).absolute() / 'checkpoints'
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, config) -> None:
    """Starts an asynchronous save; training continues while it is written."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
      ),
    )

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into the shapes and shardings of `abstract_state`.

    The state is resharded as needed, so a checkpoint written by N processes
    restores on M. `data_iterator` is moved to the saved position in place.
    """
    try:
      state = self.restore_state(step, abstract_state)
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
        f'The checkpoint at {self.directory / str(step)} does not fit the '
        'model and optimizer of this config (was the config changed since '
        'it was written?). Use a fresh --workdir for a different model, or '
        f'restore the config the checkpoint was trained with. Orbax said: {e}'
      ) from e
    self._restore_data_position(step, data_iterator)
    return state

  def _restore_data_position(self, step: int, data_iterator) -> None:
    # Each process saved its own iterator state. Every process's position is
    # the same global batch index (see data/pipeline.py), so when the process
    # count changed, any saved file gives the position.
    data_dir = self.directory / str(step) / 'data'
    index, count = jax.process_index(), jax.process_count()
    own = data_dir / f'process_{index}-of-{count}.json'
    saved = [own] if own.exists() else sorted(data_dir.glob('process_*-of-*.json'))
    if not saved:
      raise UserError(f'The checkpoint at {data_dir.parent} has no data-iterator position.')
    data_iterator.set_state(json.loads(saved[0].read_text()))

  def restore_config(self, step: int) -> dict:
    """The config saved with `step`, as a dict in today's layout (see `upgrade_config`)."""
    saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return upgrade_config(saved['config'])

  def restore_state(self, step: int, abstract_state):
    """Only the train state of `step` (e.g. for export; no data iterator)."""
    return self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )['state']

  def restore_variables(self, step: int, abstract_variables: dict) -> dict:
    """Only {'params', 'batch_stats'} of `step`'s train state, as NumPy arrays: the optimizer
    state (twice the parameters' size under AdamW) is not read. For using a trained model."""
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_variables)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(
        self.directory / str(step) / 'state',
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
      )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
  groups (which the old fixed groups were).
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
  return config
