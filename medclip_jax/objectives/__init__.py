"""Training objectives as data: `config.objectives` maps module names to weights.

An objective is a module in this package. It defines

  loss(outputs, batch, params, mesh, config) -> (scalar loss, {name: metric})
      `outputs` are the model's named outputs (`MedCLIP.__call__`), `batch`
      the global batch, `params` every trainable parameter (the model's and
      the objectives'), `mesh` the device mesh the batch is sharded over,
      `config` the run's config (where an objective's settings live);

and, if it learns parameters of its own (a decoder, a bias),

  init_params(config, rng) -> {top-level parameter name: initial array or tree};

and, if it has settings of its own, `DEFAULTS` ({setting: value}): they live in
`config.<name>`. And if it needs more of the model than the two embeddings,

  model_inputs(config, batch) -> {MedCLIP.__call__ keyword: value}
      e.g. AttMIM's mask settings, which make the model return the masked
      image's feature grid too.

The train step adds up weight x loss over `config.objectives` and logs each
term as `loss/<name>` and each metric as `<name>/<metric>`. An objective at
weight 0 is off: it is not computed and its parameters do not exist, so the
defaults can list every objective for the command line to switch on
(`--config.objectives.sigmoid=1 --config.objectives.infonce=0`). A new
objective is one new file here plus one entry in `config.objectives`; its
parameters need a pattern in `config.train.param_groups` (an unmatched
parameter is an error).
"""

import importlib
import pkgutil
import zlib
from types import ModuleType

import jax

from medclip_jax.errors import UserError


def available() -> list[str]:
  """The objective modules in this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_'))


def modules() -> dict[str, ModuleType]:
  """{name: module} of every objective in this package."""
  return {name: importlib.import_module(f'{__name__}.{name}') for name in available()}


def settings_defaults() -> dict[str, dict]:
  """{name: DEFAULTS} of the objectives with settings of their own, kept in the config
  section named after them (config.attmim): checked on resume like the weights, and given
  their defaults in configs saved before they existed."""
  return {name: m.DEFAULTS for name, m in modules().items() if hasattr(m, 'DEFAULTS')}


def build(config) -> dict[str, tuple[float, ModuleType]]:
  """{name: (weight, module)} of the objectives `config.objectives` switches on, or a UserError."""
  weights = dict(config.objectives)
  unknown = sorted(set(weights) - set(available()))
  if unknown:
    raise UserError(
      f'config.objectives names {unknown}, which are not objectives; the objectives are '
      f'{available()} (modules in medclip_jax/objectives/).'
    )
  bad = {name: weights[name] for name in weights if not float(weights[name]) >= 0.0}  # NaN too
  if bad:
    raise UserError(
      f'config.objectives {bad}: a weight must be a number of 0 or more (0 switches the '
      'objective off); a negative weight would climb that loss while the summed loss falls.'
    )
  active = {name: float(weight) for name, weight in weights.items() if float(weight) != 0.0}
  if not active:
    raise UserError(
      f'config.objectives {weights} switches no objective on: give at least one a non-zero '
      f'weight, e.g. --config.objectives.infonce=1; the objectives are {available()}.'
    )
  every = modules()
  return {name: (weight, every[name]) for name, weight in active.items()}


def init_params(objectives: dict, config, rng) -> dict:
  """The initial values of every parameter the objectives add, by top-level name; each
  objective draws from `rng` folded with its name."""
  params, owner = {}, {}
  for name, (_, module) in objectives.items():
    if not hasattr(module, 'init_params'):
      continue
    own_rng = jax.random.fold_in(rng, zlib.crc32(name.encode()))
    for key, value in module.init_params(config, own_rng).items():
      if key in params:
        raise UserError(
          f'Objectives {owner[key]!r} and {name!r} both declare a parameter {key!r}: one of '
          'them must name its parameter differently.'
        )
      params[key], owner[key] = value, name
  return params
