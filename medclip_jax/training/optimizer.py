"""AdamW with warmup + cosine decay, clipping, and learning rates per parameter group.

Parameters are put in groups by `config.train.param_groups`: group name ->
regular expression, matched in full against each parameter's path
('image_encoder/layer1/0/conv1/kernel', 'logit_scale'). Every parameter must
match exactly one group, so a new module gets a group of its own or an error,
never a catch-all learning rate. Each group's learning rate is the schedule
times `config.train.lr_multipliers[group]` (default 1); a multiplier of 0
freezes the group (no update and no optimizer state).
"""

import re

import jax
import optax
from flax import traverse_util

from medclip_jax.errors import UserError

# The towers by name; the projections, the logit scale and the objectives'
# scalars (the sigmoid loss's bias) as 'heads'.
DEFAULT_PARAM_GROUPS = {
  'image_encoder': r'image_encoder/.*',
  'text_encoder': r'text_encoder/.*',
  'heads': r'(image|text)_projection/.*|logit_scale|logit_bias',
  # Objectives' decoders, '<objective>_decoder' (MMCLIP's): trained, never exported.
  'decoders': r'[a-z0-9_]+_decoder/.*',
}


def param_path(path: tuple) -> str:
  """A parameter's path in a tree, as the group patterns see it."""
  return '/'.join(str(k) for k in path)


def _collapse(tree):
  # A subtree whose parameters are all in one group becomes that group's name,
  # so the optimizer state has one masked node per such subtree, exactly as
  # when groups were the top-level keys (older checkpoints restore).
  if not isinstance(tree, dict):
    return tree
  tree = {k: _collapse(v) for k, v in tree.items()}
  values = list(tree.values())
  if values and all(isinstance(v, str) for v in values) and len(set(values)) == 1:
    return values[0]
  return tree


def param_labels(config, params) -> dict:
  """The group of every parameter, as a prefix of the `params` tree holding group names."""
  patterns = {}
  for name, pattern in dict(config.param_groups).items():
    try:
      patterns[name] = re.compile(pattern)
    except re.error as e:
      raise UserError(
        f'config.train.param_groups.{name}={pattern!r} is not a regular expression ({e}).'
      ) from e
  labels, unmatched, ambiguous = {}, [], []
  for path in traverse_util.flatten_dict(params):
    text = param_path(path)
    groups = [name for name, pattern in patterns.items() if pattern.fullmatch(text)]
    if len(groups) == 1:
      labels[path] = groups[0]
    else:
      (ambiguous if groups else unmatched).append(f'{text} {groups}' if groups else text)
  if unmatched or ambiguous:
    details = ''.join(
      f'\n  {title} ({len(items)}): ' + ', '.join(items[:6]) + (' ...' if len(items) > 6 else '')
      for title, items in (('in no group', unmatched), ('in several groups', ambiguous))
      if items
    )
    raise UserError(
      'config.train.param_groups must put every parameter in exactly one group '
      f'(patterns {dict(config.param_groups)}, matched in full against the '
      f"'/'-joined parameter path):{details}\nAdd or tighten a pattern."
    )
  return {k: _collapse(v) for k, v in traverse_util.unflatten_dict(labels).items()}


def frozen_groups(config) -> set[str]:
  """The parameter groups whose learning-rate multiplier is 0."""
  return {name for name, mult in dict(config.lr_multipliers).items() if float(mult) == 0.0}


def locked_towers(config, params) -> list[str]:
  """The towers ('image_encoder', 'text_encoder') none of whose parameters train."""
  labels, frozen = param_labels(config, params), frozen_groups(config)
  return [
    tower
    for tower in ('image_encoder', 'text_encoder')
    if tower in labels and all(group in frozen for group in jax.tree.leaves(labels[tower]))
  ]


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
  """Builds the optimizer from `config.train` for a parameter tree (shapes are enough)."""
  schedule = learning_rate_schedule(config)
  groups = list(dict(config.param_groups))
  multipliers = dict(config.lr_multipliers)
  # The default's entries (1.0) may name groups a config's own param_groups leave out.
  unknown = {g for g, mult in multipliers.items() if g not in groups and float(mult) != 1.0}
  if unknown:
    raise UserError(
      f'config.train.lr_multipliers has unknown groups {sorted(unknown)}; the groups '
      f'(config.train.param_groups) are {groups}.'
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

  labels = param_labels(config, params)
  # Only groups that hold parameters get an optimizer state (the decoders' group exists
  # only with MMCLIP's objectives), so checkpoints keep their layout when groups are added.
  used = set(jax.tree.leaves(labels))
  transforms = {
    name: group_transform(float(multipliers.get(name, 1.0))) for name in groups if name in used
  }
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm),
    optax.multi_transform(transforms, labels),
  )
