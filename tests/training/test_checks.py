"""Bad configs fail before anything compiles or is written, naming the field and the fix; so
do config changes that a checkpoint cannot resume with."""

import json
import os
import shutil

import jax
import pytest

from configs import default
from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from medclip_jax.interop import convert
from medclip_jax.training import checks
from medclip_jax.training import setup
from medclip_jax.training import trainer
from tests import helpers


BAD = {
  'a worker count that is not one': (
    {'data.workers': -2},
    r'config\.data\.workers=-2 is not a number of worker processes',
  ),
  'a negative learning rate': (
    {'train.learning_rate': -0.1},
    r'config\.train\.learning_rate=-0\.1 is negative',
  ),
  'a negative learning-rate multiplier': (
    {'train.lr_multipliers.heads': -1.0},
    r"config\.train\.lr_multipliers \{'heads': -1\.0\} are negative, which would climb",
  ),
  'a negative end of the decay': (
    {'train.end_learning_rate_factor': -1.0},
    r'config\.train\.end_learning_rate_factor=-1\.0 is negative',
  ),
  'gradients clipped to norm 0': (
    {'train.grad_clip_norm': 0.0},
    r'config\.train\.grad_clip_norm=0\.0: .* 0 would stop all learning',
  ),
  'a negative weight decay': (
    {'train.weight_decay': -0.1},
    r'config\.train\.weight_decay=-0\.1 is negative, which would grow the weights',
  ),
  "Adam's second moment not decaying": (
    {'train.adam_b2': 1.0},
    r'config\.train\.adam_b2=1\.0 must be in \[0, 1\)',
  ),
  'no Adam epsilon': ({'train.adam_eps': 0.0}, r'config\.train\.adam_eps=0\.0 must be positive'),
  'a warmup longer than the run': (
    {'train.warmup_steps': 13},
    r'config\.train\.warmup_steps=13 does not fit the run \(config\.train\.steps=12\)',
  ),
  'a negative warmup': (
    {'train.warmup_steps': -5},
    r'config\.train\.warmup_steps=-5 is negative: give the steps over which',
  ),
  'a parameter group that is no regular expression': (
    {'train.param_groups.heads': '(image|text)_projection/.*|(logit_bias'},
    r"config\.train\.param_groups\.heads='\(image.*' is not a regular expression \(missing \)",
  ),
  'a convolution implementation that does not exist': (
    {'model.image.ops': 'gpu'},
    r"config\.model\.image\.ops='gpu': give 'auto'",
  ),
  'crop scale above the whole image': (
    {'data.crop_scale': (1.5, 2.0)},
    r'config\.data\.crop_scale=\(1\.5, 2\.0\) must be \(low, high\) with 0 < low <= high <= 1',
  ),
  'a crop scale of one number': (
    {'data.crop_scale': (0.9,)},
    r'config\.data\.crop_scale=\(0\.9,\) needs 2 numbers \(low, high\)',
  ),
  'a mean of two channels': (
    {'data.mean': (0.5, 0.5)},
    r'config\.data\.mean=\(0\.5, 0\.5\) needs 3 numbers, one per RGB channel',
  ),
  'no examples per step': (
    {'train.batch_size': 0},
    r'train\.batch_size = 0: give a positive number of examples per step',
  ),
  'no examples per evaluation batch': (
    {'eval.batch_size': -4},
    r'eval\.batch_size = -4: give a positive number',
  ),
  'image size below the tower': (
    {'data.image_size': 16},
    r'config\.data\.image_size=16 .* at least 32',
  ),
  'text longer than the positions': (
    {'data.max_text_length': 600},
    r'config\.data\.max_text_length=600 .*max_position_embeddings=512\): set config\.data\.max_text_length to 512',
  ),
  'tokenizer larger than the vocabulary': (
    {'model.text.vocab_size': 10},
    r'tokens but config\.model\.text\.vocab_size is 10: set config\.model\.text\.vocab_size to 30522',
  ),
  'missing image init file': (
    {'model.image.init': 'torchvision:/nonexistent/resnet18.pth'},
    r"config\.model\.image\.init='torchvision:/nonexistent/resnet18\.pth': nothing at",
  ),
  'missing text init directory': (
    {'model.text.init': 'hf:/nonexistent/bert'},
    r"config\.model\.text\.init='hf:/nonexistent/bert': nothing at /nonexistent/bert",
  ),
  'missing init_from': (
    {'init_from': '/nonexistent/run'},
    r"config\.init_from='/nonexistent/run' is neither",
  ),
  'mesh larger than the devices': (
    {'mesh': {'data': 4, 'fsdp': 1}},
    r"config\.mesh \{'data': 4, 'fsdp': 1\} needs 4 devices but 1 are visible",
  ),
  'mesh axis of size 0': (
    {'mesh': {'data': -1, 'fsdp': 0}},
    r"config\.mesh \{'data': -1, 'fsdp': 0\}: each axis size is a number of devices",
  ),
  'fixed mesh axis that does not divide the devices': (
    {'mesh': {'data': -1, 'fsdp': 2}},
    r"the fixed axes \{'fsdp': 2\} take 2 devices, which does not divide the 1 visible",
  ),
  'final evaluation on a split the dataset lacks': (
    {'eval.split': 'validation'},
    r"config\.eval\.split='validation': the dataset in .* has no records in that split "
    r'\(splits with records: test, train, val\)',
  ),
  'periodic evaluation on a split the dataset lacks': (
    {'eval.every': 6, 'eval.every_split': 'dev'},
    r"config\.eval\.every_split='dev'",
  ),
  'no non-finite steps allowed': (
    {'train.max_nonfinite_in_a_row': 0},
    r'config\.train\.max_nonfinite_in_a_row must be at least 1',
  ),
  'logging every 0 steps': (
    {'train.log_every': 0},
    r'log_every must be at least 1 .*, got 0: one above config\.train\.steps logs the last',
  ),
  'a checkpoint every 0 steps': (
    {'train.checkpoint_every': 0},
    r'checkpoint_every must be at least 1 .*, got 0: one above config\.train\.steps saves',
  ),
  'no checkpoint kept': (
    {'train.keep_checkpoints': 0},
    r'config\.train\.keep_checkpoints must be at least 1 .*: none would delete the trained',
  ),
  'evaluations every negative number of steps': (
    {'eval.every': -6},
    r'config\.eval\.every must be 0 \(evaluate at the end of training only\) or .*, got -6',
  ),
  'AttMIM on an image size that is not whole cells': (
    {'objectives.attmim': 1.0, 'data.image_size': 48},
    r'config\.data\.image_size: AttMIM masks whole cells .* 48 is not \(e\.g\. 32 is\)',
  ),
  'AttMIM masking nothing': (
    {'objectives.attmim': 1.0, 'attmim.mask_ratio': 0.0},
    r'config\.attmim\.mask_ratio: the share of cells masked must lie in \(0, 1\], got 0\.0',
  ),
  'EntMLM with a lexicon that is not there': (
    {'objectives.entmlm': 1.0, 'entmlm.lexicon': '/nonexistent/lexicon.txt'},
    r'The entity lexicon /nonexistent/lexicon\.txt cannot be read',
  ),
  'an unpaired share that is not a share': (
    {'data.unpaired.image_only': 1.0},
    r'config\.data\.unpaired\.image_only: 1\.0 is not a share of the training stream',
  ),
  'unpaired shares leaving no room for pairs': (
    {'data.unpaired.image_only': 0.5, 'data.unpaired.text_only': 0.5, 'objectives.entmlm': 1.0},
    r'config\.data\.unpaired: the shares .* leave no room for paired records',
  ),
  'text-only records with the sigmoid loss': (
    {'data.unpaired.text_only': 0.1, 'objectives.entmlm': 1.0, 'objectives.sigmoid': 1.0},
    r'config\.data\.unpaired\.text_only: the sigmoid objective does not leave out',
  ),
  'text-only records without EntMLM': (
    {'data.unpaired.text_only': 0.1},
    r'config\.data\.unpaired\.text_only: text-only records train EntMLM alone',
  ),
  'unpaired records the dataset lacks': (
    {'data.unpaired.image_only': 0.1},
    r'config\.data\.unpaired\.image_only=0\.1, but .* holds no image_only records',
  ),
  'a negative objective weight': (
    {'objectives.infonce': -1.0},
    r"config\.objectives \{'infonce': -1\.0\}: a weight must be a number of 0 or more",
  ),
  'a NaN objective weight': (
    {'objectives.sigmoid': float('nan')},
    r"config\.objectives \{'sigmoid': nan\}: a weight must be",
  ),
  'no shared embedding': (
    {'model.embed_dim': 0},
    r'config\.model\.embed_dim: the shared embedding needs 1 or more dimensions, got 0',
  ),
  'a ResNet depth there is none of': (
    {'model.image.depth': 152},
    r'config\.model\.image\.depth: 152 is not a ResNet this image tower builds: give one of '
    r'\[18, 34, 50',
  ),
  'an unknown pooling': (
    {'model.text.pooling': 'max'},
    r"config\.model\.text\.pooling: 'max' is not a pooling: give 'cls'",
  ),
  'text heads that do not divide its width': (
    {'model.text.hidden_size': 32, 'model.text.num_heads': 5},
    r'config\.model\.text\.num_heads: 5 attention heads do not divide hidden_size=32: .* '
    r'\(e\.g\. 4\)',
  ),
  'AttMIM decoder heads that do not divide its width': (
    {'objectives.attmim': 1.0, 'attmim.width': 64, 'attmim.heads': 3},
    r'config\.attmim\.heads: 3 attention heads do not divide width=64',
  ),
  'an EntMLM decoder without layers': (
    {'objectives.entmlm': 1.0, 'entmlm.depth': -2},
    r'config\.entmlm: width=.*, heads=.* and depth=-2 must each be 1 or more',
  ),
  'a training split the dataset lacks': (
    {'data.train_split': 'training'},
    r"config\.data\.train_split='training': the dataset in .* has no records in that split "
    r'\(splits with records: test, train, val\)',
  ),
  'a laterality handling that is none': (
    {'data.laterality': 'flip'},
    r"config\.data\.laterality: 'flip' is not a way of flipping captions that name a side",
  ),
  'a flip probability above 1': (
    {'data.hflip_prob': 7.0},
    r'config\.data\.hflip_prob: 7\.0 is not a probability: give one in \[0, 1\]',
  ),
  'negative reader threads': (
    {'data.num_threads': -1},
    r'config\.data\.num_threads: the reader threads per process must be 0 or more, got -1',
  ),
  'negative prefetch': (
    {'data.prefetch': -1},
    r'config\.data\.prefetch: the batches buffered per process must be 0 or more, got -1',
  ),
  'no room for a caption': (
    {'data.max_text_length': 1},
    r'config\.data\.max_text_length: 1 tokens leave no room for a caption',
  ),
  'MMCLIP objectives with gradient caching': (
    {'objectives.entmlm': 1.0, 'train.grad_cache_chunks': 2},
    r"config\.train\.grad_cache_chunks: the objectives \['entmlm'\] read feature grids",
  ),
}


@pytest.mark.parametrize('name', sorted(BAD))
def test_a_bad_config_is_refused_before_the_workdir_is_written(name, tiny_config, tmp_path):
  overrides, message = BAD[name]
  config = tiny_config()
  config.update_from_flattened_dict(overrides)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=message):
    trainer.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_pretrained_checkpoint_that_does_not_fit_leaves_no_workdir(tiny_config, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  resnet18 = tmp_path / 'resnet18.pth'
  torch.save(torchvision.models.resnet18().state_dict(), resnet18)
  config = tiny_config()  # a ResNet18 of width 8
  config.model.image.init = f'torchvision:{resnet18}'
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match='torchvision ResNet checkpoint does not match'):
    trainer.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  # A workdir that was there before stays.
  workdir.mkdir()
  with pytest.raises(UserError, match='torchvision ResNet checkpoint does not match'):
    trainer.train_and_evaluate(config, str(workdir))
  assert workdir.is_dir()


def test_a_batch_that_does_not_divide_over_the_devices_is_one_paragraph_exit_2(
  tiny_flags, tmp_path
):
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  proc = helpers.start_main(
    [f'--workdir={workdir}', *tiny_flags(train__batch_size=15)],
    log,
    env={'XLA_FLAGS': helpers.xla_flags(2)},
  )
  assert proc.wait(timeout=120) == 2
  out = log.read_text()
  assert (
    'error: train.batch_size = 15 must be a multiple of the number of devices (2), since '
    'each device takes an equal slice: set it to 14 or another multiple of 2.' in out
  )
  assert 'Traceback' not in out
  assert not os.path.exists(workdir)


def test_every_parameter_group_has_a_multiplier_the_command_line_can_override():
  config = default.get_config()
  assert set(config.train.lr_multipliers) == set(config.train.param_groups)
  config.update_from_flattened_dict({'train.lr_multipliers.decoders': 0.5})  # as README shows
  assert config.train.lr_multipliers.decoders == 0.5


def test_a_decoders_multiplier_leaves_a_plain_runs_optimizer_state_as_it_was(tiny_config):
  config = tiny_config()
  without = setup.shapes(config).abstract_state.opt_state
  config.train.lr_multipliers = {**config.train.lr_multipliers, 'decoders': 1.0}
  assert jax.tree.structure(setup.shapes(config).abstract_state.opt_state) == jax.tree.structure(
    without
  )


@pytest.mark.parametrize('before, after', [(1.0, 0.0), (0.0, 0.1)], ids=['freeze', 'unfreeze'])
def test_freezing_or_unfreezing_a_group_on_resume_is_refused_pointing_to_init_from(
  tiny_config, before, after
):
  config = tiny_config()
  config.train.lr_multipliers.text_encoder = before
  saved = json.loads(config.to_json_best_effort())
  config.train.lr_multipliers.text_encoder = after
  with pytest.raises(UserError) as error:
    checks.check_resume(saved, config, '/runs/a/checkpoints/12')
  message = str(error.value)
  assert f'(train.lr_multipliers.text_encoder: {before} -> {after}, checkpoint value' in message
  assert (
    'Freezing or unfreezing a parameter group (train.lr_multipliers.<group> to or from 0) '
    'changes the layout of the optimizer state' in message
  )
  assert 'in a fresh --workdir with --config.init_from=/runs/a ' in message


def test_multiplier_changes_that_keep_the_optimizer_state_are_accepted_and_listed(tiny_config):
  config = tiny_config()
  saved = json.loads(config.to_json_best_effort())  # no decoders entry, as configs had before
  config.train.lr_multipliers = {**config.train.lr_multipliers, 'decoders': 1.0}
  assert checks.check_resume(saved, config, '/runs/a/checkpoints/12') is None
  # A plain CLIP run has no decoders: freezing them changes nothing it holds.
  config.train.lr_multipliers.decoders = 0.0
  config.train.lr_multipliers.text_encoder = 0.5
  assert checks.check_resume(saved, config, '/runs/a/checkpoints/12') == (
    'resuming with settings changed since the checkpoint: '
    'train.lr_multipliers.decoders: 1.0 -> 0.0, train.lr_multipliers.text_encoder: 1.0 -> 0.5'
  )


def test_a_run_on_the_bundled_minilm_resumes_where_it_is_installed_elsewhere(
  tiny_config, monkeypatch, tmp_path
):
  def resolved():
    config = tiny_config()
    config.model.text.init = f'hf:{tokenizer_lib.BUNDLED_MINILM}'
    convert.resolve_pretrained_config(config)
    return config

  here = tokenizer_lib.bundled_minilm_dir()
  # Saved on a machine whose venv has the package elsewhere (its config.json is enough here).
  elsewhere = tmp_path / 'other-venv' / 'minilm'
  elsewhere.mkdir(parents=True)
  shutil.copy(here / 'config.json', elsewhere / 'config.json')
  with monkeypatch.context() as patched:
    patched.setattr(tokenizer_lib, 'bundled_minilm_dir', lambda: elsewhere)
    saved = json.loads(resolved().to_json_best_effort())
  assert checks.check_resume(saved, resolved(), '/runs/a/checkpoints/12') is None
  # A config saved before the tokenizer was kept by name holds this machine's path.
  older = {**saved, 'data': {**saved['data'], 'tokenizer': str(here)}}
  assert checks.check_resume(older, resolved(), '/runs/a/checkpoints/12') is None


def test_a_run_on_a_bert_directory_staged_elsewhere_resumes_with_its_new_path(
  tiny_config, monkeypatch, tmp_path
):
  def resolved(where):
    config = tiny_config()
    config.model.text.init = f'hf:{where}'
    convert.resolve_pretrained_config(config)
    return config

  for site in ('site_a', 'site_b'):
    shutil.copytree(tokenizer_lib.bundled_minilm_dir(), tmp_path / site)
  monkeypatch.chdir(tmp_path)
  saved = json.loads(resolved('site_a').to_json_best_effort())  # relative, saved absolute
  assert saved['data']['tokenizer'] == str(tmp_path / 'site_a')
  moved = resolved(str(tmp_path / 'site_b'))
  # The checkpoint's vocabulary digest (compared by check_same_data) vouches for the move.
  assert checks.check_resume(saved, moved, '/runs/a/12', tokenizer_recorded=True) == (
    'resuming with settings changed since the checkpoint: '
    f"data.tokenizer: '{tmp_path / 'site_a'}' -> '{tmp_path / 'site_b'}', "
    f"model.text.init: 'hf:{tmp_path / 'site_a'}' -> 'hf:{tmp_path / 'site_b'}'"
  )
  # Without one (a checkpoint from before it was recorded), as before: refused.
  with pytest.raises(UserError, match='data.tokenizer'):
    checks.check_resume(saved, moved, '/runs/a/12')
  # Another tokenizer for the same tower is another model.
  other = resolved('site_a')
  other.data.tokenizer = str(tmp_path / 'site_b')
  with pytest.raises(UserError, match='data.tokenizer'):
    checks.check_resume(saved, other, '/runs/a/12', tokenizer_recorded=True)


def test_another_vocabulary_in_a_moved_tokenizer_directory_is_refused(tiny_config, tmp_path):
  config = tiny_config()
  trained_on = pipeline.training_data(config.data, records.read_dataset_info(config.data.dir))
  other = tmp_path / 'other'
  shutil.copytree(tokenizer_lib.resolve(config.data.tokenizer), other)
  tokenizer = tokenizer_lib.load(str(other))
  tokenizer.add_tokens(['pneumothorax'])
  tokenizer.save_pretrained(str(other))
  config.data.tokenizer = str(other)
  now = pipeline.training_data(config.data, records.read_dataset_info(config.data.dir))
  checks.check_same_data(trained_on, dict(trained_on), config.data.dir, '/runs/a/checkpoints/6')
  with pytest.raises(UserError, match=r'\(another vocabulary in the tokenizer'):
    checks.check_same_data(trained_on, now, config.data.dir, '/runs/a/checkpoints/6')


def test_a_changed_dropout_rate_resumes(tiny_config):
  # Until 61ec91a a pretrained text tower's config.json set it, whatever the config said.
  config = tiny_config()
  saved = json.loads(config.to_json_best_effort())
  config.model.text.dropout_rate = 0.0
  assert checks.check_resume(saved, config, '/runs/a/checkpoints/12') == (
    'resuming with settings changed since the checkpoint: model.text.dropout_rate: 0.1 -> 0.0'
  )


def test_resuming_with_a_frozen_text_tower_says_why_instead_of_listing_arrays(
  trained_run, tmp_path
):
  config, workdir, _ = trained_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'checkpoints')
  config = config.copy_and_resolve_references()
  config.train.lr_multipliers.text_encoder = 0.0
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert 'train.lr_multipliers.text_encoder: 1.0 -> 0.0' in message
  assert f'--config.init_from={tmp_path} ' in message
  assert 'opt_state/' not in message


def test_a_batch_larger_than_the_training_split_is_warned_of(tiny_config):
  config = tiny_config()
  info = {'splits': {'train': {'count': 96}}}
  assert checks.data_warnings(config, info) == []
  config.train.batch_size = 128
  (warning,) = checks.data_warnings(config, info)
  assert warning.startswith(
    'the global batch (config.train.batch_size=128) is larger than the 96 training records'
  )
