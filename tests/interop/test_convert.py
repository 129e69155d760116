"""Weight conversion: parity with torchvision and transformers, exact round trips, clear errors,
pretrained towers named in the config."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torchvision
import transformers

from medclip_jax import model as models
from medclip_jax.interop import convert
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError

MINILM = tokenizer_lib.bundled_minilm_dir()


def _numpy_state(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope='module')
def torch_resnet50():
  torch.manual_seed(0)
  model = torchvision.models.resnet50()
  # Random running statistics, so that eval-mode BatchNorm is not the identity,
  # and scales below 1 so that features have a trained network's magnitude
  # (units, not hundreds: torchvision's init doubles activations per block).
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.5, 0.5)
      module.running_var.uniform_(0.5, 2.0)
      module.weight.data.uniform_(0.2, 0.6)
      module.bias.data.uniform_(-0.2, 0.2)
  return model.eval()


def _flax_resnet50_variables(state):
  net = models.ResNet(depth=50)
  abstract = jax.eval_shape(
    lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  params, batch_stats = convert.resnet_from_torchvision(
    state, abstract['params'], abstract['batch_stats']
  )
  return net, {'params': params, 'batch_stats': batch_stats}


def test_resnet50_matches_torchvision_at_224px(torch_resnet50):
  net, variables = _flax_resnet50_variables(_numpy_state(torch_resnet50))
  x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    torch_resnet50.fc = torch.nn.Identity()
    expected = torch_resnet50(torch.from_numpy(x)).numpy()
  got = np.asarray(
    jax.jit(lambda v, a: net.apply(v, a, train=False))(variables, x.transpose(0, 2, 3, 1))
  )
  assert got.shape == expected.shape == (2, 2048)
  assert 1 < np.abs(expected).max() < 100
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_resnet_round_trip_is_exact(torch_resnet50):
  state = _numpy_state(torch_resnet50)
  _, variables = _flax_resnet50_variables(state)
  back = convert.resnet_to_torchvision(variables['params'], variables['batch_stats'])
  expected = {
    k: v for k, v in state.items() if not k.startswith('fc.') and 'num_batches_tracked' not in k
  }
  assert back.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.fixture(scope='module')
def minilm():
  hf = transformers.BertModel.from_pretrained(str(MINILM), add_pooling_layer=False).eval()
  text = ml_collections.ConfigDict({**convert.hf_bert_config(MINILM), 'pooling': 'cls'})
  encoders = {}
  for pooling in ('cls', 'mean'):
    text.pooling = pooling
    encoders[pooling] = models.build_text_encoder(text)
  ids = jnp.zeros((1, 8), jnp.int32)
  abstract = jax.eval_shape(
    lambda: encoders['cls'].init(jax.random.PRNGKey(0), ids, ids, train=False)
  )
  params = convert.bert_from_hf(
    convert.read_tensors(MINILM / 'model.safetensors'), abstract['params']
  )
  return hf, encoders, params


def test_bert_matches_transformers_with_padding(minilm):
  hf, encoders, params = minilm
  tok = tokenizer_lib.load(str(MINILM))
  batch = tok(
    ['Axial CT of the brain showing a left frontal mass.', 'Normal chest radiograph.'],
    padding='max_length',
    max_length=24,
    return_tensors='np',
  )
  assert batch['attention_mask'][1].sum() < 24  # the second caption is padded
  with torch.no_grad():
    hidden = hf(
      input_ids=torch.from_numpy(batch['input_ids']),
      attention_mask=torch.from_numpy(batch['attention_mask']),
    ).last_hidden_state.numpy()
  mask = batch['attention_mask'][..., None].astype(np.float32)
  expected = {'cls': hidden[:, 0], 'mean': (hidden * mask).sum(1) / mask.sum(1)}
  for pooling, encoder in encoders.items():
    got = encoder.apply(
      {'params': params}, batch['input_ids'], batch['attention_mask'], train=False
    )
    np.testing.assert_allclose(
      np.asarray(got), expected[pooling], atol=1e-4, rtol=0, err_msg=pooling
    )


def test_bert_round_trip_is_exact(minilm):
  _, _, params = minilm
  original = convert.read_tensors(MINILM / 'model.safetensors')
  back = convert.bert_to_hf(params)
  kept = {
    k: v for k, v in original.items() if not k.startswith(('pooler.', 'embeddings.position_ids'))
  }
  assert back.keys() == kept.keys()
  for key, value in kept.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_import_errors_name_the_problem(tmp_path, minilm):
  _, _, params = minilm
  junk = tmp_path / 'weights.pth'
  junk.write_bytes(b'not a checkpoint at all')
  with pytest.raises(UserError, match='not a PyTorch or safetensors checkpoint'):
    convert.read_tensors(junk)
  junk_st = tmp_path / 'weights.safetensors'
  junk_st.write_bytes(b'\x00' * 16)
  with pytest.raises(UserError, match='not a PyTorch or safetensors checkpoint'):
    convert.read_tensors(junk_st)

  roberta = tmp_path / 'roberta'
  roberta.mkdir()
  hf = json.loads((MINILM / 'config.json').read_text())
  (roberta / 'config.json').write_text(json.dumps({**hf, 'model_type': 'roberta'}))
  with pytest.raises(UserError, match="model_type is 'roberta'"):
    convert.hf_bert_config(roberta)

  resnet18 = _numpy_state(torchvision.models.resnet18())
  net = models.ResNet(depth=50)
  abstract = jax.eval_shape(
    lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  with pytest.raises(
    UserError, match=r'(?s)missing \(165\).*layer1.0.conv3.weight.*wrong shape.*image.depth \(18'
  ):
    convert.resnet_from_torchvision(resnet18, abstract['params'], abstract['batch_stats'])

  shrunk = {
    k: v[:10] if k == 'embeddings.word_embeddings.weight' else v
    for k, v in convert.bert_to_hf(params).items()
  }
  with pytest.raises(UserError, match='embeddings.word_embeddings.weight: checkpoint'):
    convert.bert_from_hf(shrunk, params)


def test_fine_tuned_berts_and_configs_from_googles_release_are_read(tmp_path, minilm):
  _, _, params = minilm
  tensors = convert.bert_to_hf(params)
  heads = {  # BertForSequenceClassification's and BertForQuestionAnswering's heads
    'classifier.weight': np.zeros((2, 384), np.float32),
    'qa_outputs.bias': np.zeros(2, np.float32),
  }
  back = convert.bert_from_hf({f'bert.{k}': v for k, v in {**tensors, **heads}.items()}, params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  # Google's bert_config.json fields only: no model_type, no layer_norm_eps.
  hf = json.loads((MINILM / 'config.json').read_text())
  google = {k: v for k, v in hf.items() if k not in ('model_type', 'layer_norm_eps')}
  (tmp_path / 'config.json').write_text(json.dumps(google))
  assert convert.hf_bert_config(tmp_path) == convert.hf_bert_config(MINILM)


def test_a_relative_bert_directory_is_saved_absolute_and_dropout_stays_the_configs(
  tiny_config, monkeypatch
):
  config = tiny_config()
  monkeypatch.chdir(MINILM.parent)
  config.model.text.init = f'hf:{MINILM.name}'
  config.model.text.dropout_rate = 0.0
  convert.resolve_pretrained_config(config)
  assert config.model.text.init == f'hf:{MINILM}' and config.data.tokenizer == str(MINILM)
  assert config.model.text.dropout_rate == 0.0 and config.model.text.hidden_size == 384


def test_a_bert_directory_whose_tokenizer_outgrew_its_embeddings_says_so(tiny_config, tmp_path):
  from medclip_jax.training.setup import Setup  # pylint: disable=import-outside-toplevel

  bert = tmp_path / 'bert'
  shutil.copytree(MINILM, bert)
  tokenizer = tokenizer_lib.load(str(bert))
  tokenizer.add_tokens(['pneumothorax', 'cardiomegaly'])
  tokenizer.save_pretrained(str(bert))
  config = tiny_config()
  config.model.text.init = f'hf:{bert}'
  with pytest.raises(UserError, match='its added tokens have no embedding') as error:
    Setup.create(config)
  assert 'vocab_size to' not in str(error.value)  # the init would overwrite it


def test_a_bert_directory_without_a_tokenizer_says_to_copy_one_into_it(tiny_config, tmp_path):
  from medclip_jax.training.setup import Setup  # pylint: disable=import-outside-toplevel

  bert = tmp_path / 'bert'
  bert.mkdir()
  for name in ('config.json', 'model.safetensors'):
    shutil.copy(MINILM / name, bert / name)
  config = tiny_config()
  config.model.text.init = f'hf:{bert}'
  with pytest.raises(UserError) as error:
    Setup.create(config)
  assert "uses that directory's own tokenizer, so it needs tokenizer.json or vocab.txt" in str(
    error.value
  )
  assert 'Point config.data.tokenizer' not in str(error.value)  # the init would overwrite it


def test_config_init_takes_text_tower_size_tokenizer_and_weights_from_the_directory(
  tiny_config, minilm
):
  _, _, minilm_params = minilm
  config = tiny_config()
  config.model.text.init = f'hf:{tokenizer_lib.BUNDLED_MINILM}'
  convert.resolve_pretrained_config(config)
  assert (config.model.text.hidden_size, config.model.text.num_layers) == (384, 6)
  # By name, not by this machine's install path: a saved config resumes elsewhere.
  assert config.data.tokenizer == tokenizer_lib.BUNDLED_MINILM
  assert tokenizer_lib.resolve(config.data.tokenizer) == MINILM

  model = models.build(config.model)
  size, length = config.data.image_size, config.data.max_text_length
  abstract = jax.eval_shape(
    lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
      jnp.zeros((1, size, size, 3)),
      jnp.zeros((1, length), jnp.int32),
      jnp.ones((1, length), jnp.int32),
      train=False,
    )
  )
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  params, batch_stats = convert.load_pretrained(config, zeros['params'], zeros['batch_stats'])
  assert (set(params), batch_stats) == ({'text_encoder'}, {})  # only the tower with an init
  for a, b in zip(jax.tree.leaves(params['text_encoder']), jax.tree.leaves(minilm_params)):
    np.testing.assert_array_equal(a, b)

  config.model.image.init = 'timm:/somewhere'
  with pytest.raises(UserError, match="expected one of 'torchvision:PATH'"):
    convert.load_pretrained(config, zeros['params'], zeros['batch_stats'])


def test_demo_config_trains_from_minilm_with_the_text_tower_locked(tiny_data, tmp_path, minilm):
  from configs import demo  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import checkpointing, setup, trainer  # pylint: disable=import-outside-toplevel

  _, _, minilm_params = minilm
  config = demo.get_config()  # text tower: the bundled MiniLM, lr multiplier 0
  config.data.dir = tiny_data
  config.data.image_size = 32
  config.model.image.width = 8
  config.train.batch_size = 8
  config.train.steps = 2
  config.train.warmup_steps = 1
  config.eval.batch_size = 16
  config.eval.bn_recompute_batches = 1
  config.evals = {}  # the tower's weights are what this checks: nothing is evaluated
  assert trainer.train_and_evaluate(config, str(tmp_path)) == {}
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3)
  state = setup.restore_on_one_device(config, ckpt, 2)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(state.params['text_encoder']), jax.tree.leaves(minilm_params)):
    np.testing.assert_array_equal(a, b)
