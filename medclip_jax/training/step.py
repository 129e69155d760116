"""The update: both towers forward, the weighted objectives, AdamW, the scale clamped.

The gradient is the whole batch's at once, or with `config.train.grad_cache_chunks`
> 1 gradient caching's, chunk by chunk (training/grad_cache.py).

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
from medclip_jax.training import grad_cache
from medclip_jax.training import optimizer as optimizer_lib
from medclip_jax.training.state import TrainState

# CLIP caps the temperature so that logits stay below 100.
MAX_LOGIT_SCALE = math.log(100.0)


# The model's outputs that are rows of the batch (the logit scale is a parameter).
EMBEDDINGS = ('image_embedding', 'text_embedding')
# The batch's columns the towers read.
ROW_INPUTS = ('image', 'input_ids', 'attention_mask', 'text_features')


def make_gradient(model, objectives: dict, mesh, config):
  """(params, batch_stats, global batch, dropout key) -> ((loss, (metrics, batch_stats)), grads).

  The plain gradient over the whole batch, or with `config.train.grad_cache_chunks`
  > 1 gradient caching's (training/grad_cache.py): the same loss and gradients
  in less memory (BatchNorm aside, see there).
  """
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  frozen = optimizer_lib.frozen_groups(config.train)
  chunks = config.train.grad_cache_chunks

  def gradient(params, batch_stats, batch, dropout_rng):
    labels = optimizer_lib.param_labels(config.train, params)

    # A tower none of whose parameters train runs in inference mode.
    locked = optimizer_lib.locked_towers(config.train, params)

    def trainable(params):
      # No backward pass through frozen groups (clipping would otherwise keep
      # their unused gradients alive).
      return jax.tree.map(
        lambda group, p: jax.lax.stop_gradient(p) if group in frozen else p, labels, params
      )

    # What objectives ask of the model beyond the embeddings (AttMIM's masked pass,
    # EntMLM's masked captions); those objectives run without gradient caching.
    extra = {}
    for _, module in objectives.values():
      extra.update(getattr(module, 'model_inputs', lambda *_: {})(config, batch))

    def embed(params, rows, rng):
      rngs = {'dropout': rng}
      if extra:
        rngs['masking'] = jax.random.fold_in(rng, 1)
      outputs, updates = model.apply(
        {'params': trainable(params), 'batch_stats': batch_stats},
        pipeline.normalize(rows['image'], mean, std),
        rows['input_ids'],
        rows['attention_mask'],
        train=True,
        locked=locked,
        # A locked text tower's outputs, computed once (Setup.locked_text_features).
        text_features=rows.get('text_features'),
        rngs=rngs,
        mutable=['batch_stats'],
        **extra,
      )
      keep = outputs.keys() - {'logit_scale'} if extra else EMBEDDINGS
      return {key: outputs[key] for key in keep}, updates['batch_stats']

    def objective(embeddings, params):
      params = trainable(params)
      outputs = {**embeddings, 'logit_scale': params['logit_scale']}
      terms, metrics = [], {}
      for name, (weight, module) in objectives.items():
        value, details = module.loss(outputs, batch, params, mesh, config)
        terms.append(weight * value)
        metrics[f'loss/{name}'] = value
        metrics.update({f'{name}/{key}': v for key, v in details.items()})
      return sum(terms), metrics

    rows = {key: batch[key] for key in ROW_INPUTS if key in batch}
    if chunks > 1:
      return grad_cache.value_and_grad(
        embed, objective, params, batch_stats, rows, dropout_rng, chunks, mesh
      )

    def loss_fn(params):
      embeddings, new_stats = embed(params, rows, dropout_rng)
      loss, metrics = objective(embeddings, params)
      return loss, (metrics, new_stats)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  return gradient


def make_train_step(model, objectives: dict, tx, schedule, mesh, config):
  """(state, global batch) -> (state, metrics), to be jitted over `mesh`.

  `objectives` is `objectives.build(config)`: the loss is the weighted sum of
  theirs, and each term is logged as `loss/<name>`.
  """
  gradient = make_gradient(model, objectives, mesh, config)

  def train_step(state: TrainState, batch):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    (loss, (metrics, batch_stats)), grads = gradient(
      state.params, state.batch_stats, batch, dropout_rng
    )
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
      # The rate the optimizer applies: its step count leaves out the skipped steps.
      'learning_rate': schedule(state.step - state.skipped),
      'grad_norm': grad_norm,
      'logit_scale': jnp.exp(params['logit_scale']),
      'truncated_texts': jnp.sum(batch['truncated']),
      'nonfinite': nonfinite,
      'skipped': state.skipped + nonfinite,
    }
    if 'kind' in batch:  # unpaired data mixed in: how many of each kind this step saw
      for index, kind in enumerate(pipeline.KINDS):
        metrics[f'data/{kind}'] = jnp.sum(batch['kind'] == index)
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
