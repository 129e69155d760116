"""The trainer: one function that reads top to bottom.

Sections: checks and set-up; input; state; evaluation; loop. Every process runs
the same code; only process 0 writes logs. What is assembled (mesh, model,
objectives, optimizer, shardings, jitted step, state) comes from
`training.setup`.
"""

import time
from pathlib import Path

import jax
import numpy as np

from medclip_jax.data import pipeline
from medclip_jax.evaluation import results as results_lib
from medclip_jax.training import checkpointing
from medclip_jax.training import reporting
from medclip_jax.training.setup import Setup


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  Returns the final evaluation results.
  """
  workdir = str(Path(workdir).absolute())

  # ---- Checks and set-up: mesh, model, objectives, optimizer, shardings, jitted step ----
  # Problems a user can fix (data, config) are reported before anything is written.
  info = pipeline.dataset_info(config.data)
  train_text = pipeline.describe_train_text(config.data, info)
  setup = Setup.create(config)
  evaluation = setup.evaluation(info.get('labels', {}))
  precise_bn = setup.precise_bn()
  reporter = reporting.Reporter(workdir, config.train.steps)
  reporter.info(
    f'{jax.process_count()} process(es), {jax.device_count()} '
    f'{jax.devices()[0].platform} device(s), mesh {dict(setup.mesh.shape)}'
  )
  reporter.info(train_text)
  n_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
  reporter.info(f'model: {n_params / 1e6:.2f}M parameters')

  # ---- Input ----
  train_iter = setup.train_batches()

  # ---- State: restored from the latest checkpoint, or fresh ----
  checkpointer = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is None:
    state = setup.init_state()
    if config.init_from:
      reporter.info(f'initialised from the model in {config.init_from}')
    if config.model.image.init or config.model.text.init:
      reporter.info(
        f'initialised from {config.model.image.init or "(random image tower)"} and '
        f'{config.model.text.init or "(random text tower)"}'
      )
  else:
    reporter.info(f'resuming from the checkpoint at step {latest} in {checkpointer.directory}')
    state = setup.restore_state(checkpointer, latest, train_iter)

  # ---- Evaluation: precise BatchNorm, then every configured evaluator ----

  def run_eval(state, step):
    t0 = time.perf_counter()
    if config.eval.bn_recompute_batches:
      stats_iter = setup.train_batches(seed=config.seed + step + 1)
      batches = (next(stats_iter) for _ in range(config.eval.bn_recompute_batches))
      state = state.replace(batch_stats=precise_bn(state.params, state.batch_stats, batches))
    results, details = evaluation(state.variables())
    reporter.write(step, results)
    results_lib.write(workdir, step, results, details)
    for name, entry in details.items():
      if 'unavailable' in entry:
        reporter.info(f'{name}: unavailable: {entry["unavailable"]}')
    if step == config.train.steps and config.eval.report and jax.process_index() == 0:
      from medclip_jax.evaluation import report  # pylint: disable=import-outside-toplevel

      path = results_lib.step_dir(workdir, step) / 'report.html'
      report.write(
        path, step=step, split=config.eval.split, model=workdir, results=results, details=details
      )
      reporter.info(f'report: {path}')
    reporter.info(
      f'evaluated step {step} in {time.perf_counter() - t0:.1f}s: {results_lib.headline(results)}'
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
      state, metrics = setup.train_step(state, setup.global_batch(next(train_iter)))
      pending.append(metrics)
      if step == start + 1:  # the first step compiled: time from here on
        jax.block_until_ready(metrics)
        reporter.start_timer(step)
      elif step == start + 2 and setup.train_step._cache_size() > 1:  # pylint: disable=protected-access
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
  reporter.info(results_lib.format_table(total, results))
  return results
