"""The update: both towers forward, the weighted objectives, AdamW, the scale clamped.

A step whose loss or gradient norm is not finite changes nothing but the
step and skip counters (big_vision and MaxText stop or skip likewise): one bad
batch does not poison the parameters, and the trainer stops after
`config.train.max_nonfinite_in_a_row` such steps.
"""

import math

import jax
import jax.numpy as jnp
import optax

from medclip_jax.data import pipeline
from medclip_jax.training import optimizer as optimizer_lib
from medclip_jax.training.state import TrainState

# CLIP caps the temperature so that logits stay below 100.
MAX_LOGIT_SCALE = math.log(100.0)


def make_train_step(model, objectives: dict, tx, schedule, mesh, config):
  """(state, global batch) -> (state, metrics), to be jitted over `mesh`.

  `objectives` is `objectives.build(config)`: the loss is the weighted sum of
  theirs, and each term is logged as `loss/<name>`.
  """
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  frozen = optimizer_lib.frozen_groups(config.train)

  def train_step(state: TrainState, batch):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = pipeline.normalize(batch['image'], mean, std)
    labels = optimizer_lib.param_labels(config.train, state.params)

    # A tower none of whose parameters train runs in inference mode.
    locked = optimizer_lib.locked_towers(config.train, state.params)

    def loss_fn(params):
      # No backward pass through frozen groups (clipping would otherwise keep
      # their unused gradients alive).
      params = jax.tree.map(
        lambda group, p: jax.lax.stop_gradient(p) if group in frozen else p, labels, params
      )
      outputs, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        batch['input_ids'],
        batch['attention_mask'],
        train=True,
        locked=locked,
        # A locked text tower's outputs, computed once (Setup.locked_text_features).
        text_features=batch.get('text_features'),
        rngs={'dropout': dropout_rng},
        mutable=['batch_stats'],
      )
      terms, metrics = [], {}
      for name, (weight, objective) in objectives.items():
        value, extra = objective.loss(outputs, batch, params, mesh)
        terms.append(weight * value)
        metrics[f'loss/{name}'] = value
        metrics.update({f'{name}/{key}': v for key, v in extra.items()})
      return sum(terms), (metrics, updates['batch_stats'])

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, 'logit_scale': jnp.minimum(params['logit_scale'], MAX_LOGIT_SCALE)}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_not_finite = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old
    )
    params = keep_if_not_finite(params, state.params)
    opt_state = keep_if_not_finite(opt_state, state.opt_state)
    batch_stats = keep_if_not_finite(batch_stats, state.batch_stats)
    nonfinite = 1 - finite.astype(jnp.int32)
    metrics = {
      'loss': loss,
      **metrics,
      'learning_rate': schedule(state.step),
      'grad_norm': grad_norm,
      'logit_scale': jnp.exp(params['logit_scale']),
      'truncated_texts': jnp.sum(batch['truncated']),
      'nonfinite': nonfinite,
      'skipped': state.skipped + nonfinite,
    }
    if 'stop' in batch:
      # A preemption request from any process (training/preemption.py),
      # seen by all of them in the same step's metrics.
      metrics['stop'] = jnp.max(batch['stop'])
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      skipped=state.skipped + nonfinite,
    )
    return new_state, metrics

  return train_step
