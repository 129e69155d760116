"""The trainer: one function that reads top to bottom.

Sections: checks and set-up; the workdir lock; input; state; evaluation; loop.
Every process runs the same code; only process 0 writes logs. What is
assembled (mesh, model, objectives, optimizer, shardings, jitted step, state)
comes from `training.setup`. What can go wrong on a cluster is handled here:
another trainer on the workdir (`workdir_lock`), an unreadable checkpoint (the
newest readable one is used), a stop request (`preemption`), non-finite losses
(skipped by the step, counted here, the run stopped after
`train.max_nonfinite_in_a_row`).
"""

import collections
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from medclip_jax.data import pipeline
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from medclip_jax.evaluation import results as results_lib
from medclip_jax.training import checkpointing
from medclip_jax.training import checks
from medclip_jax.training import optimizer as optimizer_lib
from medclip_jax.training import preemption
from medclip_jax.training import reporting
from medclip_jax.training import workdir_lock
from medclip_jax.training.setup import Setup

# Per-step metrics that are counters or signals rather than averages.
_NOT_AVERAGED = ('nonfinite', 'skipped', 'stop')


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the latest readable checkpoint in `workdir`) and evaluates.

  Returns the final evaluation results. Raises `preemption.Preempted` after a
  stop request (the checkpoint written) and `UserError` for what a user can fix.
  """
  workdir = str(Path(workdir).absolute())
  if config.data.dir:
    # Saved with the checkpoints as an absolute path: loading, exporting or evaluating the run
    # from another directory finds its data (and the max_side its inputs are read at).
    config.data.dir = str(Path(config.data.dir).absolute())

  # ---- Checks and set-up: mesh, model, objectives, optimizer, shardings, jitted step ----
  # Problems a user can fix (data, config) are reported before anything is written.
  info = pipeline.dataset_info(config.data)
  checks.check_splits(config, info)
  train_text = pipeline.describe_train_text(config.data, info)
  setup = Setup.create(config)
  mix = pipeline.describe_unpaired(config.data, info)  # the shares were checked with the config
  evaluation = setup.evaluation(info.get('labels', {}))
  evaluation.check_data()
  precise_bn = setup.precise_bn()

  # ---- The workdir lock: one trainer per workdir ----
  new = not Path(workdir).exists()
  try:
    with workdir_lock.WorkdirLock(workdir) as stale:
      return _train(config, workdir, info, train_text, mix, setup, evaluation, precise_bn, stale)
  except UserError:
    # Found only while the state is made (a pretrained checkpoint that does not fit): a
    # workdir this run made and wrote nothing into (an empty lock and log) goes again.
    written = any(p.is_file() and p.stat().st_size for p in Path(workdir).rglob('*'))
    if new and jax.process_count() == 1 and not written:
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def _train(config, workdir, info, train_text, mix, setup, evaluation, precise_bn, stale) -> dict:
  """The run itself, under the workdir lock; `stale` describes a lock taken over; `mix`
  the unpaired data mixed in ('' for none)."""
  reporter = reporting.Reporter(workdir, config.train.steps, config.eval.every)
  if stale:
    reporter.info(f'took over the workdir lock left by {stale}, which is no longer running')
  reporter.info(
    f'{jax.process_count()} process(es), {jax.device_count()} '
    f'{jax.devices()[0].platform} device(s), mesh {dict(setup.mesh.shape)}'
  )
  reporter.info(train_text)
  if mix:
    reporter.info(mix)
  for warning in evaluation.warnings:
    reporter.info(f'warning: {warning}')
  for warning in checks.data_warnings(config, info):
    reporter.info(f'warning: {warning}')
  n_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
  reporter.info(f'model: {n_params / 1e6:.2f}M parameters')

  # ---- Input ----
  train_iter = setup.train_batches()

  # ---- State: restored from the latest checkpoint, or fresh ----
  checkpointer = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints)
  training_data = pipeline.training_data(config.data, info)

  def save(step, state):
    checkpointer.save(step, state, train_iter, config, training_data)

  def close():
    # Also on Ctrl-C or an error: let a checkpoint being written complete.
    try:
      checkpointer.wait()
    finally:
      # Worker processes end with the reader: with batches in flight left to the
      # interpreter's exit, Python warns of leaked shared memory.
      train_iter.close()
      checkpointer.close()
      reporter.close()

  state, latest = None, None
  for step in sorted(checkpointer.all_steps(), reverse=True):
    problem = None
    try:
      state = setup.restore_state(checkpointer, step, train_iter)
    except checkpointing.CorruptCheckpoint as e:
      problem = f'{e.path}: {e.reason}'
    except UserError:
      # It does not fit this config: name the changed settings if that is why.
      checks.check_resume(checkpointer.restore_config(step), config, checkpointer.path(step))
      raise
    # Each process checks the files it reads; all take the same checkpoint.
    if _all_processes(problem is None):
      latest = step
      break
    moved = checkpointer.set_aside(step)
    reporter.info(
      f'warning: skipping the checkpoint at step {step}: '
      f'{problem or "unreadable on another process"}; moved to {moved}'
    )
  if latest is None:
    state = setup.init_state()
    if config.init_from:
      reporter.info(f'initialised from the model in {config.init_from}')
    elif config.model.image.init or config.model.text.init:
      reporter.info(
        f'initialised from {config.model.image.init or "(random image tower)"} and '
        f'{config.model.text.init or "(random text tower)"}'
      )
  else:
    saved = checkpointer.restore_config(latest)
    trained_on = checkpointer.restore_dataset(latest)
    changed = checks.check_resume(
      saved, config, checkpointer.path(latest), tokenizer_recorded=trained_on is not None
    )
    checks.check_same_data(
      trained_on,
      training_data,
      config.data.dir or config.data.tfds_name,
      checkpointer.path(latest),
    )
    if latest > config.train.steps:
      close()
      raise UserError(
        f'The newest checkpoint in {checkpointer.directory} is at step {latest}, past '
        f'config.train.steps={config.train.steps}. To train on, set --config.train.steps '
        f'above {latest}; to evaluate that model, run python -m medclip_jax.evaluate '
        f'--workdir={workdir}; to train a new model, use a fresh --workdir.'
      )
    finished = results_lib.exists(workdir, latest, config.eval.split)
    # Every process takes the same branch, even where only process 0 sees the results file.
    if latest == config.train.steps and _all_processes(finished):
      results = results_lib.read(workdir, latest, config.eval.split)
      close()
      reporter.info(
        f'This run is complete: trained to step {latest} and evaluated on '
        f'{config.eval.split} ({results_lib.path(workdir, latest)}); nothing to do. To '
        f'evaluate it again, run python -m medclip_jax.evaluate --workdir={workdir}; to '
        'train on, raise --config.train.steps.'
      )
      reporter.info(results_lib.format_table(latest, results))
      return results
    if latest == config.train.steps and saved['train']['steps'] != latest:
      # Saved mid-run: its BatchNorm statistics are running averages, which the final
      # checkpoint replaces with recomputed ones, and a saved step is not written again.
      close()
      raise UserError(
        f'config.train.steps={latest} ends the run at the checkpoint saved at step {latest} '
        f'of a {saved["train"]["steps"]}-step run, which it cannot make its final one. To '
        f'train on, set --config.train.steps above {latest}; to evaluate that checkpoint, run '
        f'python -m medclip_jax.evaluate --workdir={workdir} --step={latest}.'
      )
    reporter.info(f'resuming from the checkpoint at step {latest} in {checkpointer.directory}')
    if changed:
      reporter.info(changed)
    if saved['train']['batch_size'] != config.train.batch_size:
      reporter.info(_rebatch(train_iter, saved['train']['batch_size'], config.train.batch_size))
  reporter.drop_after(latest or 0)  # steps a killed run logged past its checkpoint run again
  if jax.process_index() == 0:
    # So that the model loads and exports where its tokenizer directory has moved since.
    tokenizer_lib.keep_copy(config.data.tokenizer, workdir)

  # A locked text tower's features, computed once (only to train: a run resumed at its
  # last step only evaluates); the iterator keeps its position.
  text_features, note = None, ''
  if latest != config.train.steps:
    text_features, note = setup.locked_text_features(state.params, info)
  if note:
    reporter.info(note)
  if text_features is not None:
    position = train_iter.get_state()
    train_iter.close()
    train_iter = setup.train_batches(text_features=text_features)
    train_iter.set_state(position)

  # ---- Evaluation: precise BatchNorm, then every configured evaluator ----

  # A locked image tower trains on the statistics it was loaded with; recomputed ones
  # would give evaluation and the export features its heads never saw.
  image_locked = 'image_encoder' in optimizer_lib.locked_towers(config.train, state.params)
  if image_locked and config.eval.bn_recompute_batches:
    reporter.info(
      'config.eval.bn_recompute_batches: not recomputed (the image tower is locked: its '
      'BatchNorm statistics stay as loaded)'
    )

  def recompute_batch_stats(state, step):
    """`state` with the image tower's BatchNorm statistics recomputed with its weights."""
    if not config.eval.bn_recompute_batches or image_locked:
      return state
    stats_iter = setup.train_batches(seed=config.seed + step + 1, paired_only=True)
    batches = (next(stats_iter) for _ in range(config.eval.bn_recompute_batches))
    try:
      return state.replace(batch_stats=precise_bn(state.params, state.batch_stats, batches))
    finally:
      stats_iter.close()  # its worker processes end now, not when it is collected

  def run_eval(state, step, t0):
    """Evaluates `state` (its statistics already recomputed); `t0` when that began."""
    split = config.eval.split if step == config.train.steps else config.eval.every_split
    results, details = evaluation(state.variables(), split)
    # Prefixed by split, so that the final test-split row is not a point on the val curves.
    for name, entry in details.items():
      if 'unavailable' in entry:
        reporter.info(f'{name}: unavailable: {entry["unavailable"]}')
    # The report first: the results file marks the step evaluated, so a run stopped before
    # it evaluates the step again and writes both.
    if step == config.train.steps and config.eval.report and jax.process_index() == 0:
      from medclip_jax.evaluation import report  # pylint: disable=import-outside-toplevel

      path = results_lib.step_dir(workdir, step) / 'report.html'
      report.write(
        path, step=step, split=config.eval.split, model=workdir, results=results, details=details
      )
      reporter.info(f'report: {path}')
    reporter.write(step, {f'{split}/{key}': value for key, value in results.items()})
    results_lib.write(workdir, step, split, results, details)
    reporter.evaluated(time.perf_counter() - t0)
    reporter.info(
      f'evaluated step {step} on {split} in {time.perf_counter() - t0:.1f}s: '
      f'{results_lib.headline(results)}'
    )
    return results

  # ---- Loop ----
  total = config.train.steps
  start = int(state.step)
  pending = []
  truncated = 0  # texts cut off at max_text_length tokens in this run
  seen = collections.Counter()  # records of each kind trained on in this run (unpaired data)
  in_a_row = []  # the latest steps whose update was skipped, while they follow each other
  stop = preemption.StopRequests()
  stop_at_end = False  # a stop asked for in the last step

  def check_step(step, metrics) -> bool:
    """Counts a finished step's non-finite loss; True if any process asked to stop."""
    flags = jax.device_get({k: metrics[k] for k in ('nonfinite', 'stop')})
    if not flags['nonfinite']:
      in_a_row.clear()
    else:
      in_a_row.append(step)
      reporter.info(f'warning: step {step}: the loss or gradients are not finite; update skipped')
      if len(in_a_row) >= config.train.max_nonfinite_in_a_row:
        good = [s for s in checkpointer.all_steps() if s < in_a_row[0]]
        last = (
          f'step {max(good)} in {checkpointer.directory}' if good else 'none (none was written)'
        )
        raise UserError(
          f'Training stopped at step {step}: the loss or gradients were not finite for '
          f'{len(in_a_row)} steps in a row (steps {in_a_row[0]}..{step}, all skipped; '
          f'config.train.max_nonfinite_in_a_row={config.train.max_nonfinite_in_a_row}). '
          f'The last checkpoint before them: {last}. Lower config.train.learning_rate or '
          'look at the data of these steps, and restart from that checkpoint.'
        )
    return bool(flags['stop'])

  def with_stop(local):
    """This process's rows with its stop request as a column: the step's metrics carry every
    process's request."""
    return {**local, 'stop': np.full(len(local['truncated']), stop.requested, np.int32)}

  if start < total:
    reporter.info(f'training steps {start + 1}..{total}, global batch {config.train.batch_size}')
  # A run stopped during a periodic evaluation resumes from that step's checkpoint, written
  # before the evaluation: evaluate it now, or its point on the validation curves is lost.
  missed = (
    0 < start < total
    and config.eval.every
    and start % config.eval.every == 0
    # Every process takes the same branch, even where only process 0 sees the results file.
    and not _all_processes(results_lib.exists(workdir, start, config.eval.every_split))
  )
  try:
    if missed:
      run_eval(recompute_batch_stats(state, start), start, time.perf_counter())
    with stop:
      previous = None  # (step, metrics) of the step before this one, read one step late
      for step in range(start + 1, total + 1):
        # No name keeps the batch past its step: worker processes hand batches over in
        # shared memory, released when the batch is, and one held to the exit is
        # reported by Python as leaked.
        state, metrics = setup.train_step(state, setup.global_batch(with_stop(next(train_iter))))
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
        stop_now = previous is not None and check_step(*previous)
        previous = (step, metrics)
        if step % config.train.log_every == 0 or step == total or stop_now:
          logged = jax.device_get(pending)
          truncated += sum(int(m['truncated_texts']) for m in logged)
          scalars = _window_scalars(logged)
          for kind in pipeline.KINDS if 'data/paired' in logged[0] else ():
            seen[kind] += sum(int(m[f'data/{kind}']) for m in logged)
            scalars[f'data/seen_{kind}'] = seen[kind]
          reporter.train_progress(step, scalars, config.train.batch_size)
          pending = []
        if step == total:
          stop_at_end = check_step(*previous)
          break  # the last checkpoint is written after the final statistics
        if stop_now:
          # Every process saw the request in the same step's metrics: all stop here.
          if checkpointer.latest_step() != step:
            save(step, state)
          checkpointer.wait()
          raise preemption.Preempted(step, checkpointer.directory)
        if step % config.train.checkpoint_every == 0:
          save(step, state)
        if config.eval.every and step % config.eval.every == 0:
          t0 = time.perf_counter()
          try:
            run_eval(recompute_batch_stats(state, step), step, t0)
          except RuntimeError:
            if not stop.requested:
              raise
            # A job's stop signal reaches every process of it: the evaluation's own reader
            # processes, just started, may die of it before they can ignore it. The trained
            # state is whole: checkpoint it and stop as asked.
            reporter.info(f'the evaluation of step {step} ended with the stop request')
            if checkpointer.latest_step() != step:
              save(step, state)
            checkpointer.wait()
            raise preemption.Preempted(step, checkpointer.directory) from None
          reporter.start_timer(step)  # the evaluation's time is not training throughput

      # The final model keeps the recomputed BatchNorm statistics, so the last
      # checkpoint (and anything exported from it) is what was evaluated. It is
      # written before the evaluators run, still under the stop requests: a stop
      # asked for since the last step waits for it, then ends the run, whose rerun
      # only evaluates.
      t0 = time.perf_counter()
      if latest != total:
        state = recompute_batch_stats(state, total)
        save(total, state)
        checkpointer.wait()
      if start < total and (stop_at_end or stop.requested):
        raise preemption.Preempted(total, checkpointer.directory)
    # Stopping now loses nothing, so a stop request ends the evaluation at once.
    with preemption.StopRequests(interrupt=preemption.Preempted(total, checkpointer.directory)):
      results = run_eval(state, total, t0)
  finally:
    close()
  if seen:
    reporter.info(
      'trained on '
      + ', '.join(f'{seen[kind]} {kind.replace("_", "-")}' for kind in pipeline.KINDS)
      + ' records in this run'
    )
  if truncated:
    texts = (total - start) * config.train.batch_size
    reporter.info(
      f'{truncated} of {texts} training texts ({truncated / texts:.1%}) were longer than '
      f'config.data.max_text_length={config.data.max_text_length} tokens and were truncated.'
    )
  reporter.info(results_lib.format_table(total, results))
  return results


def _rebatch(train_iter, old: int, new: int) -> str:
  """Moves `train_iter`'s position, saved as a count of global batches of `old` pairs, to the
  same example in batches of `new` (or the batch boundary before it); says where."""
  examples = train_iter.get_state()['next_index'] * old
  index, again = divmod(examples, new)
  train_iter.set_state({'next_index': index})
  return (
    f'the global batch changed from {old} to {new} pairs: the data resumes at example '
    f'{index * new} of the stream'
    + (f' ({again} examples read before are read again)' if again else '')
    + f', where the run had read {examples}'
  )


def _all_processes(ok: bool) -> bool:
  """True if `ok` holds on every process (a collective in a multi-process run)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _window_scalars(logged: list) -> dict:
  """The scalars of a logging row from the steps since the last: means over the steps
  whose update was applied (None if none was), the learning rate of the last step, how
  many steps of the window were skipped and how many the run has skipped so far."""
  applied = [m for m in logged if not m['nonfinite']]
  scalars = {
    k: float(np.mean([m[k] for m in applied])) if applied else None
    for k in logged[0]
    if k not in _NOT_AVERAGED
  }
  scalars['learning_rate'] = float(logged[-1]['learning_rate'])
  scalars['skipped_steps'] = int(sum(int(m['nonfinite']) for m in logged))
  scalars['skipped_total'] = int(logged[-1]['skipped'])
  return scalars
