"""The trainer: one function that reads top to bottom.

Sections: mesh; input; model and optimizer; sharded state; update step;
checkpoint; evaluation; loop. Every process runs the same code; only process
0 writes logs.
"""

import math
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medclip_jax import checkpointing
from medclip_jax import convert
from medclip_jax import evaluate
from medclip_jax import losses
from medclip_jax import models
from medclip_jax import optimizer as optimizer_lib
from medclip_jax import reporting
from medclip_jax import sharding
from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError

# CLIP caps the temperature so that logits stay below 100.
MAX_LOGIT_SCALE = math.log(100.0)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: dict
  batch_stats: dict  # BatchNorm running statistics of the image tower
  opt_state: optax.OptState
  rng: jax.Array  # uint32[2] key; per-step keys are folded from it


def _tfds_info(data_config) -> dict:
  """The dataset info of a TFDS-built dataset, or a UserError."""
  try:
    from medclip_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(
      f'config.data.tfds_name={data_config.tfds_name!r} needs tensorflow-datasets: '
      'pip install tensorflow-datasets==4.9.10 (TensorFlow itself is not needed).'
    ) from e
  try:
    return tfds_builders.dataset_info(data_config.tfds_name, data_config.dir or None)
  except Exception as e:  # TFDS raises several types for a dataset it cannot find.
    raise UserError(
      f'No TFDS dataset {data_config.tfds_name!r} found in '
      f'{data_config.dir or "the default TFDS data_dir"} (config.data.dir): {e} Build it with '
      'python -m medclip_jax.data.tfds_builders (see its --help), or unset config.data.tfds_name '
      'to read prepared shards.'
    ) from e


def check_data(data_config) -> dict:
  """The dataset's info, or a UserError saying how to prepare the data."""
  if data_config.tfds_name:
    info = _tfds_info(data_config)
  else:
    try:
      info = records.read_dataset_info(data_config.dir)
    except FileNotFoundError as e:
      raise UserError(
        f'No prepared dataset found in {Path(data_config.dir).absolute()} '
        f'(config.data.dir). Training reads ArrayRecord shards and '
        f'dataset_info.json written by the prepare command; for this config '
        f'run:\n  {data_config.prepare_command}\nthen start training again.'
      ) from e
  if info.get('splits', {}).get(data_config.train_split, {}).get('count') == 0:
    raise UserError(
      f'The {data_config.train_split!r} split in {data_config.dir} is empty: nothing to train '
      'on. Check the skipped records in its dataset_info.json.'
    )
  return info


def create_train_state(model, tx, config, rng) -> TrainState:
  """Initial state; jitted with output shardings so it is born distributed."""
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  size, length = config.data.image_size, config.data.max_text_length
  variables = model.init(
    {'params': params_rng, 'dropout': dropout_rng},
    jnp.zeros((1, size, size, 3), jnp.float32),
    jnp.zeros((1, length), jnp.int32),
    jnp.ones((1, length), jnp.int32),
    train=False,
  )
  params = variables['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables['batch_stats'],
    opt_state=tx.init(params),
    rng=state_rng,
  )


def model_and_optimizer(config):
  """(model, optimizer, abstract TrainState) for a config; nothing is allocated."""
  model = models.build(config.model)
  rng = jax.random.PRNGKey(config.seed)
  abstract_params = jax.eval_shape(
    lambda r: create_train_state(model, optax.identity(), config, r).params, rng
  )
  tx = optimizer_lib.create(config.train, abstract_params)
  abstract_state = jax.eval_shape(lambda r: create_train_state(model, tx, config, r), rng)
  return model, tx, abstract_state


def make_train_step(model, tx, schedule, mesh, config):
  """The update: forward both towers, global contrastive loss, AdamW, clamp the scale."""
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  axes = sharding.batch_axes(mesh)
  frozen = optimizer_lib.frozen_groups(config.train)

  def train_step(state: TrainState, batch):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = pipeline.normalize(batch['image'], mean, std)

    def loss_fn(params):
      # No backward pass through frozen groups (clipping would otherwise keep
      # their unused gradients alive).
      params = {
        k: jax.lax.stop_gradient(v) if optimizer_lib.param_group(k) in frozen else v
        for k, v in params.items()
      }
      (image_emb, text_emb, log_scale), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        batch['input_ids'],
        batch['attention_mask'],
        train=True,
        rngs={'dropout': dropout_rng},
        mutable=['batch_stats'],
      )
      if config.model.loss == 'sigmoid':
        loss = losses.sigmoid(
          image_emb, text_emb, jnp.exp(log_scale), params['logit_bias'], mesh, axes
        )
      else:
        loss = losses.infonce(image_emb, text_emb, jnp.exp(log_scale), mesh, axes)
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, 'logit_scale': jnp.minimum(params['logit_scale'], MAX_LOGIT_SCALE)}
    metrics = {
      'loss': loss,
      'learning_rate': schedule(state.step),
      'grad_norm': optax.tree.norm(grads),
      'logit_scale': jnp.exp(params['logit_scale']),
      'truncated_texts': jnp.sum(batch['truncated']),
    }
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics

  return train_step


def init_state(model, tx, config, state_shardings, rng) -> TrainState:
  """A fresh TrainState, each array created directly in its sharding."""
  return jax.jit(lambda r: create_train_state(model, tx, config, r), out_shardings=state_shardings)(
    rng
  )


def jit_train_step(model, tx, schedule, mesh, config, state_shardings):
  """The jitted update: (state, global batch) -> (state, metrics); state donated."""
  return jax.jit(
    make_train_step(model, tx, schedule, mesh, config),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  Returns the final evaluation results.
  """
  workdir = str(Path(workdir).absolute())
  # Problems a user can fix are reported before anything is written.
  info = check_data(config.data)
  train_text = pipeline.describe_train_text(config.data, info)
  convert.resolve_pretrained_config(config)
  reporter = reporting.Reporter(workdir, config.train.steps)

  # ---- Mesh ----
  mesh = sharding.create_mesh(config.mesh)
  reporter.info(
    f'{jax.process_count()} process(es), {jax.device_count()} '
    f'{jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}'
  )

  # ---- Input ----
  label_vocabs = info.get('labels', {})
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  tokenizer = tokenizer_lib.load(config.data.tokenizer)
  if len(tokenizer) > config.model.text.vocab_size:
    raise UserError(
      f'The tokenizer in {tokenizer_lib.resolve(config.data.tokenizer)} has '
      f'{len(tokenizer)} tokens but config.model.text.vocab_size is '
      f'{config.model.text.vocab_size}; make them agree.'
    )
  reporter.info(train_text)
  train_iter = pipeline.train_iterator(
    config.data,
    seed=config.seed,
    local_batch_size=local_batch,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )

  # ---- Model and optimizer ----
  model, tx, abstract_state = model_and_optimizer(config)
  schedule = optimizer_lib.learning_rate_schedule(config.train)

  # ---- Sharded state ----
  rng = jax.random.PRNGKey(config.seed)
  state_shardings = sharding.state_shardings(abstract_state, mesh, config.fsdp_min_size)
  n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
  reporter.info(f'model: {n_params / 1e6:.2f}M parameters')

  # ---- Update step ----
  train_step = jit_train_step(model, tx, schedule, mesh, config, state_shardings)

  # ---- Checkpoint ----
  checkpointer = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is None:
    state = init_state(model, tx, config, state_shardings, rng)
    if config.model.image.init or config.model.text.init:
      # Every process reads the files and places its own shards of them.
      params, batch_stats = convert.load_pretrained(
        config, abstract_state.params, abstract_state.batch_stats
      )
      place = lambda new, shardings: jax.device_put(new, {k: shardings[k] for k in new})
      state = state.replace(
        params={**state.params, **place(params, state_shardings.params)},
        batch_stats={**state.batch_stats, **place(batch_stats, state_shardings.batch_stats)},
      )
      reporter.info(
        f'initialised from {config.model.image.init or "(random image tower)"} and '
        f'{config.model.text.init or "(random text tower)"}'
      )
  else:
    reporter.info(f'resuming from the checkpoint at step {latest} in {checkpointer.directory}')
    state = checkpointer.restore(
      latest, checkpointing.abstract_like(abstract_state, state_shardings), train_iter
    )

  # ---- Evaluation ----
  evaluator = evaluate.Evaluator(model, config, mesh, label_vocabs)

  def run_eval(state, step) -> tuple[TrainState, dict]:
    t0 = time.perf_counter()
    if config.eval.bn_recompute_batches:
      stats_iter = pipeline.train_iterator(
        config.data,
        seed=config.seed + step + 1,
        local_batch_size=local_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      batches = (next(stats_iter) for _ in range(config.eval.bn_recompute_batches))
      state = state.replace(
        batch_stats=evaluate.recompute_batch_stats(
          model, state.params, state.batch_stats, batches, mesh, config
        )
      )
    results = evaluator(state)
    reporter.write(step, results)
    evaluate.write_results(workdir, step, results)
    reporter.info(
      f'evaluated step {step} in {time.perf_counter() - t0:.1f}s: '
      + '  '.join(
        f'{k} {v:.3f}' for k, v in sorted(results.items()) if k.endswith(('R@10', 'top1'))
      )
    )
    return state, results

  # ---- Loop ----
  total = config.train.steps
  start = int(state.step)
  pending = []
  truncated = 0  # texts cut off at max_text_length tokens in this run
  if start < total:
    reporter.info(f'training steps {start + 1}..{total}, global batch {config.train.batch_size}')
  try:
    for step in range(start + 1, total + 1):
      batch = sharding.to_global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      if step == start + 1:  # the first step compiled: time from here on
        jax.block_until_ready(metrics)
        reporter.start_timer(step)
      elif step == start + 2 and train_step._cache_size() > 1:  # pylint: disable=protected-access
        # A state whose dtypes or shardings differ from what the step returns
        # compiles twice and silently skews every timing.
        raise RuntimeError(
          'The train step compiled a second time: the initial '
          'state does not match the state the step returns.'
        )
      if step % config.train.log_every == 0 or step == total:
        logged = jax.device_get(pending)
        truncated += sum(int(m['truncated_texts']) for m in logged)
        scalars = {k: float(np.mean([m[k] for m in logged])) for k in logged[0]}
        scalars['learning_rate'] = float(logged[-1]['learning_rate'])
        reporter.train_progress(step, scalars, config.train.batch_size)
        pending = []
      if step == total:
        break  # the last checkpoint is written after the final statistics
      if step % config.train.checkpoint_every == 0:
        checkpointer.save(step, state, train_iter, config)
      if config.eval.every and step % config.eval.every == 0:
        run_eval(state, step)

    # The final model keeps the recomputed BatchNorm statistics, so the last
    # checkpoint (and anything exported from it) is what was evaluated.
    state, results = run_eval(state, total)
    if checkpointer.latest_step() != total:
      checkpointer.save(total, state, train_iter, config)
  finally:
    # Also on Ctrl-C or an error: let a checkpoint being written complete.
    checkpointer.wait()
    checkpointer.close()
    reporter.close()
  if truncated:
    texts = (total - start) * config.train.batch_size
    reporter.info(
      f'{truncated} of {texts} training texts ({truncated / texts:.1%}) were longer than '
      f'config.data.max_text_length={config.data.max_text_length} tokens and were truncated.'
    )
  reporter.info(evaluate.format_table(total, results))
  return results
