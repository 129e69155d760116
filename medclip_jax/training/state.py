"""The train state: what a checkpoint holds and the train step carries from step to step."""

import flax
import jax
import jax.numpy as jnp
import optax

from medclip_jax import objectives as objectives_lib
from medclip_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken (batches consumed) so far
  # The model's parameters and, beside them at the top level, the objectives'
  # (e.g. the sigmoid loss's 'logit_bias').
  params: dict
  batch_stats: dict  # BatchNorm running statistics of the image tower
  opt_state: optax.OptState
  rng: jax.Array  # uint32[2] key; per-step keys are folded from it
  # int32 scalar: steps whose update was skipped for a non-finite loss or
  # gradient (see training/step.py). Checkpoints written before it existed
  # restore with 0 (training/checkpointing.py).
  skipped: jax.Array

  def variables(self) -> dict:
    """The variables `model.apply` takes (linen ignores the objectives' parameters)."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def initial_params(model, objectives: dict, config, params_rng, dropout_rng) -> tuple[dict, dict]:
  """(params, batch_stats) of a fresh model plus its objectives' parameters."""
  size, length = config.data.image_size, config.data.max_text_length
  variables = model.init(
    {'params': params_rng, 'dropout': dropout_rng},
    jnp.zeros((1, size, size, 3), jnp.float32),
    jnp.zeros((1, length), jnp.int32),
    jnp.ones((1, length), jnp.int32),
    train=False,
  )
  # A key of its own, so that the model's initial values do not depend on the objectives.
  extra = objectives_lib.init_params(objectives, config, jax.random.fold_in(params_rng, 1))
  clash = sorted(set(extra) & set(variables['params']))
  if clash:
    raise UserError(
      f'Objective parameters {clash} have the names of model parameters: rename them in '
      'their objective module.'
    )
  return {**variables['params'], **extra}, variables['batch_stats']


def create(model, objectives: dict, tx, config, rng) -> TrainState:
  """The state at step 0; jitted with output shardings so it is born distributed."""
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  params, batch_stats = initial_params(model, objectives, config, params_rng, dropout_rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    rng=state_rng,
    skipped=jnp.zeros((), jnp.int32),
  )
