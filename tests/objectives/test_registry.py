"""Objectives as data: config.objectives names modules by weight, and mistakes are explained."""

import jax
import pytest

from medclip_jax import objectives
from medclip_jax.errors import UserError


def test_objectives_are_the_modules_of_the_package(tiny_config):
  assert {'infonce', 'sigmoid'} <= set(objectives.available())
  config = tiny_config()
  config.objectives = {'infonce': 1.0, 'sigmoid': 0.5}
  built = objectives.build(config)
  assert {name: weight for name, (weight, _) in built.items()} == {'infonce': 1.0, 'sigmoid': 0.5}
  # The sigmoid loss declares its bias; InfoNCE learns nothing of its own.
  params = objectives.init_params(built, config, jax.random.key(0))
  assert list(params) == ['logit_bias'] and float(params['logit_bias']) == -10.0


def test_weight_zero_switches_an_objective_off_parameters_included(tiny_config):
  config = tiny_config()
  assert {'infonce': 1.0, 'sigmoid': 0.0}.items() <= dict(config.objectives).items()
  built = objectives.build(config)
  assert (
    list(built) == ['infonce'] and objectives.init_params(built, config, jax.random.key(0)) == {}
  )


@pytest.mark.parametrize(
  'names, message',
  [
    ({}, 'switches no objective on'),
    ({'infonce': 0.0}, 'switches no objective on'),
    ({'clip': 1.0}, "names \\['clip'\\]"),
  ],
)
def test_unknown_or_no_objectives_are_user_errors(tiny_config, names, message):
  config = tiny_config()
  config.objectives = names
  with pytest.raises(UserError, match=message) as error:
    objectives.build(config)
  assert 'infonce' in str(error.value)  # the message lists what there is
