"""Evaluators as data, in the manner of big_vision: `config.evals.<name> = {'type': ..., **options}`.

An evaluator is a module in this package named by its type. It defines

  class Evaluator:
    def __init__(self, **options): ...            # the entry's other keys
    def __call__(self, variables, split, embedder) -> {key: float, 'details': {...}}

where `variables` are the model's, `split` the evaluated split already
embedded (`embedding.EncodedSplit`) and `embedder` the shared jitted encoders
(`embedding.Embedder`: prompts, other splits). Its float keys are reported as
`<name>.<key>`; the optional 'details' dict holds what is not a number
(confusion matrices, example retrievals, per-image rows under 'files') for the
report (`report.py`) and the files beside the results (`results.py`). It may
also define `check(embedder)`, raising a UserError for what it needs and the
dataset lacks (`Evaluation.check_data`, before anything is embedded), and
`unmatched(label_vocabs)`, warnings for the label fields it names and the
dataset lacks. A new
evaluator is one new file here plus one entry in `config.evals`.
An entry whose type is 'off' is skipped, so the command line can switch off
an evaluator a config names (`--config.evals.caption.type=off`). `config.eval`
says when and on what: the split, the batch size, how often, and the
BatchNorm recomputation before it.
"""

import functools
import importlib
import inspect
import pkgutil

import jax

from medclip_jax import sharding
from medclip_jax.errors import UserError
from medclip_jax.evaluation import embedding


@functools.cache
def available() -> list[str]:
  """The evaluator types: the modules in this package that define an `Evaluator`."""
  return sorted(
    m.name
    for m in pkgutil.iter_modules(__path__)
    if hasattr(importlib.import_module(f'{__name__}.{m.name}'), 'Evaluator')
  )


def build_evaluators(evals_config) -> dict:
  """{name: (type, Evaluator)} for `config.evals`, or a UserError naming the bad entry."""
  evaluators = {}
  for name, entry in dict(evals_config).items():
    options = dict(entry)
    kind = options.pop('type', None)
    if kind == 'off':
      continue
    if kind not in available():
      raise UserError(
        f'config.evals.{name}.type is {kind!r}; the evaluator types are {available()} '
        "(modules in medclip_jax/evaluation/), or 'off'."
      )
    evaluator = importlib.import_module(f'{__name__}.{kind}').Evaluator
    try:
      inspect.signature(evaluator).bind(**options)
    except TypeError as e:
      known = ', '.join(inspect.signature(evaluator).parameters)
      raise UserError(f'config.evals.{name}: {e} (the options of {kind!r} are {known}).') from e
    try:
      evaluators[name] = (kind, evaluator(**options))
    except (TypeError, ValueError) as e:
      raise UserError(f'config.evals.{name}: {e}') from e
  return evaluators


def run_evaluators(evaluators: dict, variables, split, embedder) -> tuple[dict, dict]:
  """(flat results {'<name>.<key>': value}, details {name: {'type': ..., ...}}) on one split."""
  results, details = {}, {}
  for name, (kind, evaluator) in evaluators.items():
    out = dict(evaluator(variables, split, embedder))
    details[name] = {'type': kind, **out.pop('details', {})}
    for key, value in out.items():
      results[f'{name}.{key}'] = float(value)
  return results, details


class Evaluation:
  """Embeds the evaluation split once and runs every configured evaluator on it."""

  def __init__(self, model, config, mesh, label_vocabs: dict):
    self.split = config.eval.split
    self.label_vocabs = dict(label_vocabs)
    self.embedder = embedding.Embedder(model, config, mesh)
    self.evaluators = build_evaluators(config.evals)
    # What the configured evaluators ask of the dataset's labels and it lacks.
    self.warnings = [
      f'config.evals.{name}: {message}'
      for name, (_, evaluator) in self.evaluators.items()
      if hasattr(evaluator, 'unmatched')
      for message in evaluator.unmatched(self.label_vocabs)
    ]

  def check_data(self) -> None:
    """Each evaluator's `check`: a UserError for what it needs of the dataset (a split, a bank
    file) and lacks, before anything is embedded."""
    for _, evaluator in self.evaluators.values():
      if hasattr(evaluator, 'check'):
        evaluator.check(self.embedder)

  def place(self, variables):
    """Host variables (a loaded model's) replicated on this evaluation's devices, once."""
    return jax.device_put(variables, sharding.replicated(self.embedder.mesh))

  def __call__(self, variables, split: str | None = None) -> tuple[dict, dict]:
    """(flat results, details) of the model `variables` on `split` (default: the config's
    eval.split); see `run_evaluators`."""
    if not self.evaluators:
      return {}, {}  # nothing to embed the split for
    self.embedder.clear_cache()
    split = self.embedder.encode_split(variables, split or self.split, self.label_vocabs)
    return run_evaluators(self.evaluators, variables, split, self.embedder)
