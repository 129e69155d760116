"""Export: the files it writes, PyTorch embeddings equal to Flax's, loading without JAX."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from medclip_jax.errors import UserError
from medclip_jax.interop import export


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
  _, workdir, _ = trained_run
  return export.export(str(workdir), str(tmp_path_factory.mktemp('export')))


def test_exported_model_embeds_like_the_flax_model(trained_run, exported):
  from medclip_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from medclip_jax.torch_model import MedCLIP  # pylint: disable=import-outside-toplevel
  from medclip_jax.training import checkpointing, setup  # pylint: disable=import-outside-toplevel

  config, workdir, _ = trained_run
  ckpt = checkpointing.Checkpointer(str(workdir), keep=3)
  state = setup.restore_on_one_device(config, ckpt, ckpt.latest_step())
  ckpt.close()
  # The evaluation's own embedding functions.
  embedder = setup.Setup.create(config).evaluation({}).embedder
  batch = next(
    pipeline.eval_batches(
      config.data, 'test', global_batch_size=8, process_index=0, process_count=1, label_vocabs={}
    )
  )
  flax_image = np.asarray(embedder.encode_images(state.variables(), batch['image']))
  flax_text = np.asarray(
    embedder.encode_texts(state.variables(), batch['input_ids'], batch['attention_mask'])
  )

  torch_model = MedCLIP.from_export(exported).eval()
  mean = np.asarray(config.data.mean, np.float32) * 255
  std = np.asarray(config.data.std, np.float32) * 255
  pixels = torch.from_numpy(
    ((batch['image'].astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()
  )
  with torch.no_grad():
    torch_image = torch_model.encode_image(pixels).numpy()
    torch_text = torch_model.encode_text(
      torch.from_numpy(batch['input_ids']).long(), torch.from_numpy(batch['attention_mask']).long()
    ).numpy()
  np.testing.assert_allclose(torch_image, flax_image, atol=1e-4, rtol=0)
  np.testing.assert_allclose(torch_text, flax_text, atol=1e-4, rtol=0)


_FRESH_PROCESS = """
import sys
for blocked in ('jax', 'flax', 'optax', 'orbax', 'grain'):
    sys.modules[blocked] = None  # importing any of them now fails
import PIL.Image, torch
from medclip_jax.torch_model import MedCLIP
model = MedCLIP.from_export(sys.argv[1]).eval()
image = model.preprocess(PIL.Image.new('L', (80, 60), 128)).unsqueeze(0)
tokens = model.tokenize(['CT of the brain.', 'Chest radiograph.'])
with torch.no_grad():
    sims = model.encode_image(image) @ model.encode_text(**tokens).T
print(tuple(sims.shape), bool(torch.isfinite(sims).all()))
"""


def test_export_loads_in_a_process_without_jax(exported):
  out = subprocess.run(
    [sys.executable, '-c', _FRESH_PROCESS, str(exported)],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.getcwd(),
  )
  assert out.stdout.strip().splitlines()[-1] == '(1, 2) True'


def test_export_writes_the_documented_files(exported, trained_run):
  config, _, _ = trained_run
  meta = json.loads((exported / 'medclip.json').read_text())
  assert meta['embed_dim'] == config.model.embed_dim and meta['step'] == config.train.steps
  assert meta['text'] == {
    'pooling': config.model.text.pooling,
    'max_length': config.data.max_text_length,
  }
  tok = transformers.AutoTokenizer.from_pretrained(str(exported / 'text_encoder'))
  assert tok.unk_token_id not in tok('brain mass', add_special_tokens=False)['input_ids']


def test_exported_files_are_readable_by_everyone_under_the_usual_umask(exported):
  # The test process runs under umask 022 (pytest does not change it).
  modes = {p.name: p.stat().st_mode & 0o777 for p in exported.rglob('*') if p.is_file()}
  assert 'image_encoder.safetensors' in modes and 'model.safetensors' in modes
  assert set(modes.values()) == {0o644}, modes


def test_export_of_a_workdir_without_checkpoints_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='No checkpoints in'):
    export.export(str(tmp_path), str(tmp_path / 'out'))


def test_export_of_a_missing_workdir_creates_no_directory(tmp_path):
  with pytest.raises(UserError, match='No checkpoints in'):
    export.export(str(tmp_path / 'runs' / 'nonexist'), str(tmp_path / 'out'))
  assert list(tmp_path.iterdir()) == []


def test_export_of_a_damaged_checkpoint_is_a_user_error_naming_the_one_before(
  trained_run, tmp_path
):
  import shutil  # pylint: disable=import-outside-toplevel

  _, workdir, _ = trained_run  # checkpoints 6 and 12
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'run' / 'checkpoints')
  files = sorted((tmp_path / 'run' / 'checkpoints' / '12' / 'state').rglob('ocdbt.process_0/d/*'))
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2 : len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2 :][:64])
  largest.write_bytes(bytes(data))  # same size: only the checksum tells
  with pytest.raises(UserError, match=r'step 12 .* is damaged: .*CRC32 differs.*--step=6'):
    export.export(str(tmp_path / 'run'), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('damage', ['garbled', 'missing'])
def test_a_checkpoint_whose_saved_config_is_damaged_is_a_user_error(trained_run, tmp_path, damage):
  import shutil  # pylint: disable=import-outside-toplevel

  _, workdir, _ = trained_run  # checkpoints 6 and 12
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'run' / 'checkpoints')
  config = tmp_path / 'run' / 'checkpoints' / '12' / 'config'
  if damage == 'garbled':
    (config / 'metadata').write_text('{garbage')
  else:
    shutil.rmtree(config)
  with pytest.raises(UserError, match=r'step 12 .* is damaged: .*config: the saved config cannot'):
    export.export(str(tmp_path / 'run'), str(tmp_path / 'out'))


def test_export_refuses_a_file_or_the_workdir_as_its_output(trained_run, tmp_path):
  _, workdir, _ = trained_run
  (tmp_path / 'afile').write_text('')
  with pytest.raises(UserError, match=r'Cannot export to .*afile is a file'):
    export.export(str(workdir), str(tmp_path / 'afile'))
  with pytest.raises(UserError, match='it is a training workdir, which would then load as'):
    export.export(str(workdir), str(workdir))
  assert not list(workdir.glob('medclip.json'))


@pytest.mark.parametrize(
  'damage, problem',
  [
    ('no heads', r'No weights file at .*heads\.safetensors'),
    ('truncated heads', r'heads\.safetensors is not a PyTorch or safetensors checkpoint'),
    ('garbled metadata', r'medclip\.json cannot be read: it is not JSON'),
    ('metadata without step', r'medclip\.json cannot be read: it lacks step'),
  ],
)
def test_a_damaged_export_is_a_user_error(exported, tmp_path, damage, problem):
  import shutil  # pylint: disable=import-outside-toplevel

  from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel

  copy = shutil.copytree(exported, tmp_path / 'export')
  heads, metadata = copy / 'heads.safetensors', copy / 'medclip.json'
  if damage == 'no heads':
    heads.unlink()
  elif damage == 'truncated heads':
    heads.write_bytes(heads.read_bytes()[:100])
  elif damage == 'garbled metadata':
    metadata.write_text('{"step": 12')
  else:
    metadata.write_text(
      json.dumps({k: v for k, v in json.loads(metadata.read_text()).items() if k != 'step'})
    )
  with pytest.raises(UserError, match=problem):
    load.load(copy)
