"""Mixed precision and rematerialisation: bf16 towers train with float32 parameters,
optimizer state, statistics, heads and loss; remat changes memory, not parameters or
results; bad values are refused naming the field."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax import model as model_lib
from medclip_jax.errors import UserError
from medclip_jax.training import checkpointing
from medclip_jax.training import checks
from medclip_jax.training.setup import Setup

# Where each tower's activations are read: the last ResNet stage and the BERT layers.
IMAGE_ACTIVATIONS = ('image_encoder', 'layer4')
TEXT_ACTIVATIONS = ('text_encoder', 'encoder')
HEADS = (('image_projection',), ('text_projection',))


def _output_dtypes(model, variables, batch, paths):
  """{path: dtype} of the outputs of the submodules at `paths` in a training pass
  (traced only: nothing is compiled)."""

  def run(variables):
    _, state = model.apply(
      variables,
      batch['image'].astype(jnp.float32),
      batch['input_ids'],
      batch['attention_mask'],
      train=True,
      rngs={'dropout': jax.random.key(0)},
      capture_intermediates=lambda mdl, method: mdl.path in paths and method == '__call__',
      mutable=['batch_stats', 'intermediates'],
    )
    return state['intermediates']

  captured = jax.eval_shape(run, variables)
  out = {}
  for path in paths:
    node = captured
    for name in path:
      node = node[name]
    out[path] = node['__call__'][0].dtype
  return out


def test_bf16_training_keeps_parameters_optimizer_state_and_statistics_float32(tiny_config):
  config = tiny_config()
  config.model.dtype = 'bfloat16'  # both towers follow it: their own dtype is ''
  setup = Setup.create(config)
  state = setup.init_state()
  batches = setup.train_batches()
  batch = setup.global_batch(next(batches))

  dtypes = _output_dtypes(
    setup.model, state.variables(), batch, (IMAGE_ACTIVATIONS, TEXT_ACTIVATIONS) + HEADS
  )
  assert dtypes[IMAGE_ACTIVATIONS] == jnp.bfloat16
  assert dtypes[TEXT_ACTIVATIONS] == jnp.bfloat16
  assert all(dtypes[head] == jnp.float32 for head in HEADS), dtypes

  for _ in range(3):
    state, metrics = setup.train_step(state, batch)
    assert np.isfinite(float(metrics['loss'])), metrics
    batch = setup.global_batch(next(batches))
  assert int(state.skipped) == 0
  float_leaves = lambda tree: [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert state.params['logit_scale'].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.batch_stats))
  assert float_leaves(state.opt_state)  # the moments are there, not only counters
  assert all(x.dtype == jnp.float32 for x in float_leaves(state.opt_state))


def test_a_tower_dtype_overrides_the_model_dtype(tiny_config):
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  config.model.text.dtype = 'float32'
  model = model_lib.build(config.model)
  assert model.image_encoder.dtype == jnp.bfloat16
  assert model.text_encoder.dtype == jnp.float32
  size, length = config.data.image_size, config.data.max_text_length
  batch = {
    'image': jnp.zeros((2, size, size, 3)),
    'input_ids': jnp.ones((2, length), jnp.int32),
    'attention_mask': jnp.ones((2, length), jnp.int32),
  }
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *batch.values(), train=False))
  dtypes = _output_dtypes(model, variables, batch, (IMAGE_ACTIVATIONS, TEXT_ACTIVATIONS))
  assert dtypes == {IMAGE_ACTIVATIONS: jnp.bfloat16, TEXT_ACTIVATIONS: jnp.float32}


# A batch at which the activations, not the parameters, take the memory.
_TOWER_INPUTS = {
  'image': lambda: (jax.random.normal(jax.random.key(1), (16, 64, 64, 3)),),
  'text': lambda: (
    jax.random.randint(jax.random.key(2), (16, 32), 1, 100),
    jnp.asarray(np.arange(32)[None, :] < np.arange(8, 24)[:, None], jnp.int32),
  ),
}


@pytest.mark.parametrize('tower', ['image', 'text'])
def test_remat_keeps_the_parameters_and_results_and_lowers_memory(tiny_config, tower):
  inputs = _TOWER_INPUTS[tower]()
  rng = np.random.default_rng(0)
  variables, results = None, {}
  for remat in ('none', 'full', 'dots'):
    config = tiny_config()
    config.model.text.num_layers = 2
    config.model[tower].remat = remat
    checks.check(config)
    encoder = getattr(model_lib.build(config.model), f'{tower}_encoder')
    abstract = jax.eval_shape(
      lambda: encoder.init(jax.random.key(0), *[x[:1] for x in inputs], train=False)
    )
    if variables is None:
      # Values from NumPy: an init would compile as long as the step.
      variables = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0.0, 0.1, x.shape), x.dtype), abstract
      )
    # The same names and shapes: the PyTorch conversion reads them.
    assert abstract == jax.eval_shape(lambda: variables), remat

    def loss(variables):
      features, updates = encoder.apply(
        variables, *inputs, train=True, rngs={'dropout': jax.random.key(3)}, mutable=['batch_stats']
      )
      return jnp.mean(jnp.sin(features)), updates

    compiled = (
      jax.jit(jax.value_and_grad(loss, has_aux=True))
      .lower(variables)
      # As the train step compiles it (XLA:CPU would undo remat otherwise).
      .compile(compiler_options=model_lib.compiler_options(config.model))
    )
    (value, updates), grads = compiled(variables)
    memory = compiled.memory_analysis().temp_size_in_bytes
    results[remat] = dict(value=value, updates=updates, grads=grads, memory=memory)

  plain = results['none']
  for remat in ('full', 'dots'):
    got = results[remat]
    np.testing.assert_allclose(got['value'], plain['value'], rtol=1e-5)
    # Gradients and, in the ResNet, the updated BatchNorm statistics.
    for key in ('grads', 'updates'):
      assert jax.tree.structure(got[key]) == jax.tree.structure(plain[key])
      for a, b in zip(jax.tree.leaves(got[key]), jax.tree.leaves(plain[key])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f'{remat} {key}')
  memory = {remat: got['memory'] for remat, got in results.items()}
  assert memory['full'] < memory['dots'] < memory['none'], memory


@pytest.mark.parametrize(
  'field, value, message',
  [
    (
      'model.dtype',
      'bf16',
      r"config\.model\.dtype='bf16' is not a compute dtype: give one of 'bfloat16'",
    ),
    ('model.image.dtype', 'float64', r"config\.model\.image\.dtype='float64' .* or '' to follow"),
    ('model.text.dtype', 'half', r"config\.model\.text\.dtype='half' is not a compute dtype"),
    (
      'model.image.remat',
      'dot',
      r"config\.model\.image\.remat='dot' .*recompute each ResNet stage",
    ),
    ('model.text.remat', 'true', r"config\.model\.text\.remat='true' .*recompute each BERT layer"),
  ],
)
def test_a_bad_dtype_or_remat_is_a_user_error_naming_the_field(tiny_config, field, value, message):
  config = tiny_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(UserError, match=message):
    Setup.create(config)


def test_dtypes_and_remat_may_change_on_resume_and_older_configs_get_their_defaults(tiny_config):
  config = tiny_config()
  saved = json.loads(config.to_json_best_effort())
  config.model.dtype = 'bfloat16'
  config.model.text.dtype = 'float32'
  config.model.image.remat = 'full'
  config.model.text.remat = 'dots'
  change = checks.check_resume(saved, config, 'step 6')
  assert 'model.image.remat' in change and 'model.dtype' in change, change

  for tower in ('image', 'text'):  # a config saved before the fields existed
    del saved['model'][tower]['dtype'], saved['model'][tower]['remat']
  assert checks.check_resume(checkpointing.upgrade_config(saved), tiny_config(), 'step 6') is None
