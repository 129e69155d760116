"""The train step with MMCLIP's objectives: off, it is plain CLIP's step bit for bit; on, all
three give one device's loss on eight (tests/training/test_trainer.py trains with them)."""

import jax
import numpy as np

from medclip_jax import sharding
from medclip_jax.training import optimizer as optimizer_lib
from medclip_jax.training import setup
from medclip_jax.training import step
from tests import helpers

# All three objectives at 64 px (a 2 x 2 grid), with small decoders. Dropout off so that the
# 1- and 8-device runs compare the same computation.
MMCLIP = {
  'data.image_size': 64,
  'model.image.ops': 'xla',
  'model.text.dropout_rate': 0.0,
  'attmim.width': 16,
  'entmlm.width': 16,
  'objectives.attmim': 1.0,
  'objectives.entmlm': 0.5,
}

_EIGHT_DEVICES = """
import numpy as np
from tests import helpers
config = helpers.step_config({**%r, 'mesh.data': 4, 'mesh.fsdp': 2})
values = helpers.step_gradient(config, helpers.random_batch(config, mlm=True))[0]
np.savez(%r, **{k: v for k, v in values.items() if not k.startswith('grads/')})
"""


def run_steps(config, batches):
  """(the losses of each step, the final state) of the jitted train step from step 0."""
  mesh = sharding.create_mesh(config.mesh)
  parts = setup.shapes(config)
  train_step = jax.jit(
    step.make_train_step(
      parts.model,
      parts.objectives,
      parts.tx,
      optimizer_lib.learning_rate_schedule(config.train),
      mesh,
      config,
    )
  )
  state, losses = helpers.step_state(config), []
  for batch in batches:
    state, metrics = train_step(state, sharding.to_global_batch(batch, mesh))
    losses.append(metrics)
  return jax.device_get(losses), jax.device_get(state)


def test_with_their_weights_at_zero_the_step_is_plain_clips_bitwise():
  config = helpers.step_config({'train.warmup_steps': 1})
  assert config.objectives.attmim == config.objectives.entmlm == 0.0
  plain = helpers.step_config({'train.warmup_steps': 1})
  # CLIP as it was before MMCLIP's objectives: no such entries, no decoders' group.
  plain.objectives = {'infonce': 1.0, 'sigmoid': 0.0}
  del plain.train.param_groups['decoders']
  batches = [helpers.random_batch(config, seed=s) for s in range(2)]
  (metrics, state), (plain_metrics, plain_state) = (
    run_steps(config, batches),
    run_steps(plain, batches),
  )
  assert [m['loss'] for m in metrics] == [m['loss'] for m in plain_metrics]
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain_state.params)):
    np.testing.assert_array_equal(got, want)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(plain_state.opt_state)


def test_on_8_devices_they_give_the_loss_of_one(tmp_path):
  config = helpers.step_config(MMCLIP)
  one = helpers.step_gradient(config, helpers.random_batch(config, mlm=True))[0]
  path = str(tmp_path / 'eight.npz')
  helpers.run_on_devices(8, _EIGHT_DEVICES % (MMCLIP, path))
  eight = dict(np.load(path))
  for key in ('loss', 'metrics/loss/infonce', 'metrics/loss/attmim', 'metrics/loss/entmlm'):
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, err_msg=key)
  for key in ('metrics/attmim/mask_ratio', 'metrics/entmlm/mask_ratio'):
    assert eight[key] == one[key], key
