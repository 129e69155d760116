"""Every config file builds its model and documents the command that runs it."""

import importlib
import math
from pathlib import Path

import jax
import pytest

from configs import default
from medclip_jax import evaluation
from medclip_jax.interop import convert
from medclip_jax.training import checks
from medclip_jax.training import setup

CONFIGS = sorted(
  p.stem for p in Path('configs').glob('*.py') if p.stem not in ('__init__', 'default')
)


def test_the_expected_configs_exist():
  assert {'demo', 'medpix', 'roco', 'pubmedvision'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_its_model_and_documents_its_command(name):
  module = importlib.import_module(f'configs.{name}')
  assert f'--config=configs/{name}.py' in module.__doc__
  config = module.get_config()
  assert config.data.prepare_command.startswith('python -m medclip_jax.data.prepare')
  assert {k: v for k, v in config.objectives.items() if v} == {'infonce': 1.0}
  assert config.model.logit_scale_init == math.log(1 / 0.07)
  convert.resolve_pretrained_config(config)
  abstract = setup.shapes(config).abstract_state  # shapes only, nothing allocated
  assert jax.tree.leaves(abstract.params)
  evaluation.build_evaluators(config.evals)  # every evaluator entry is well formed
  checks.check_fields(config, default.get_config())  # every field is one default.py defines
