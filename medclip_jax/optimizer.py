"""AdamW with warmup + cosine decay, clipping, and per-tower learning rates.

Parameters are grouped by the top-level key of the MedCLIP parameter tree:
the two towers by name, and everything else (projections, logit scale) as
'heads'. Each group's learning rate is the schedule times its multiplier; a
multiplier of 0 freezes the group (no update and no optimizer state).
"""

import jax
import optax

TOWERS = ('image_encoder', 'text_encoder')


def param_group(top_level_key: str) -> str:
  return top_level_key if top_level_key in TOWERS else 'heads'


def frozen_groups(config) -> set[str]:
  """The parameter groups whose learning-rate multiplier is 0."""
  return {name for name, mult in dict(config.lr_multipliers).items() if float(mult) == 0.0}


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to `config.learning_rate`, then cosine decay to 0."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=config.warmup_steps,
    decay_steps=max(config.steps, config.warmup_steps + 1),
    end_value=config.learning_rate * config.end_learning_rate_factor,
  )


def _decay_mask(params):
  # Decay matrices and embeddings only: not biases, norm scales/offsets or the
  # logit scale, all of which have fewer than two dimensions.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def create(config, params) -> optax.GradientTransformation:
  """Builds the optimizer from `config.train` for a MedCLIP parameter tree."""
  schedule = learning_rate_schedule(config)
  multipliers = dict(config.lr_multipliers)
  unknown = set(multipliers) - {*TOWERS, 'heads'}
  if unknown:
    raise ValueError(
      f'train.lr_multipliers has unknown groups {sorted(unknown)}; the '
      f'groups are {[*TOWERS, "heads"]}.'
    )

  def group_transform(mult):
    if mult == 0.0:
      return optax.set_to_zero()
    return optax.adamw(
      learning_rate=lambda step: mult * schedule(step),
      b1=config.adam_b1,
      b2=config.adam_b2,
      eps=config.adam_eps,
      weight_decay=config.weight_decay,
      mask=_decay_mask,
    )

  groups = {name: group_transform(float(multipliers.get(name, 1.0))) for name in (*TOWERS, 'heads')}
  labels = {key: param_group(key) for key in params}
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm),
    optax.multi_transform(groups, labels),
  )
