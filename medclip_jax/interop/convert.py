"""Weight conversion between our Flax trees and PyTorch state dicts.

The towers' parameter trees mirror torchvision's ResNet and Hugging Face's
BertModel, so conversion is a name table (`resnet.state_dict_names`,
`bert.state_dict_names`) plus layout changes: conv kernels HWIO <-> OIHW,
dense kernels [in, out] <-> [out, in]. Everything here works on NumPy arrays;
only reading a pickled `.pth`/`.bin` file needs torch (CPU is enough).
"""

import json
from pathlib import Path

import numpy as np
from flax import traverse_util

from medclip_jax.errors import UserError
from medclip_jax.interop import tables
from medclip_jax.model import bert as bert_lib
from medclip_jax.model import resnet as resnet_lib


def read_tensors(path) -> dict[str, np.ndarray]:
  """A state dict from `.safetensors`, or from a torch pickle (`.pth`, `.pt`, `.bin`)."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f'No weights file at {path}.')
  try:
    if path.suffix == '.safetensors':
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

      return dict(load_file(str(path)))
    import torch  # pylint: disable=import-outside-toplevel

    state = torch.load(str(path), map_location='cpu', weights_only=True)
  except ImportError as e:
    raise UserError(
      f'Reading {path} needs PyTorch (pip install torch, the CPU build is '
      'enough), or convert it to .safetensors first.'
    ) from e
  except Exception as e:  # torch and safetensors raise many types on bad files
    raise UserError(
      f'{path} is not a PyTorch or safetensors checkpoint that can be read '
      f'safely ({type(e).__name__}: {e}).'
    ) from e
  if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
    state = state['state_dict']  # training-loop checkpoints wrap the weights
  if not isinstance(state, dict) or not all(hasattr(v, 'shape') for v in state.values()):
    raise UserError(f'{path} holds no state dict of tensors.')
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _check(expected: dict, tensors: dict, ignored: tuple, what: str, hint: str = '') -> dict:
  """Tensors named as expected with the expected shapes, or a UserError listing the differences
  (then `hint`, the config fields that set the model's shapes)."""
  given = {
    k: v for k, v in tensors.items() if not k.startswith(ignored) and 'num_batches_tracked' not in k
  }
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  wrong = sorted(
    f'{k}: checkpoint {tuple(given[k].shape)}, model {tuple(expected[k])}'
    for k in set(expected) & set(given)
    if tuple(given[k].shape) != tuple(expected[k])
  )
  if missing or unexpected or wrong:

    def listing(title, items):
      more = f' ... and {len(items) - 8} more' if len(items) > 8 else ''
      return f'\n  {title} ({len(items)}): ' + ', '.join(items[:8]) + more if items else ''

    raise UserError(
      f'The {what} does not match the model in the config.'
      + listing('missing', missing)
      + listing('unexpected', unexpected)
      + listing('wrong shape', wrong)
      + (f'\n{hint}' if hint else '')
    )
  return given


def _torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _flax_layout(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def resnet_from_torchvision(tensors: dict, params, batch_stats) -> tuple[dict, dict]:
  """(params, batch_stats) of our ResNet from a torchvision state dict.

  `params` and `batch_stats` give the expected structure (real or
  `jax.eval_shape` trees); `fc.*` is ignored.
  """
  names = resnet_lib.state_dict_names(params, batch_stats)
  flat = {
    'params': traverse_util.flatten_dict(params),
    'batch_stats': traverse_util.flatten_dict(batch_stats),
  }
  expected = {
    k: _torch_layout(path, np.empty(flat[col][path].shape, np.int8)).shape
    for k, (col, path) in names.items()
  }
  given = _check(
    expected,
    tensors,
    tables.TORCHVISION_RESNET_IGNORED,
    'torchvision ResNet checkpoint',
    hint='Set config.model.image.depth (18, 34, 50 or 101) and config.model.image.width (64 '
    "for torchvision's ResNets) to the checkpoint's.",
  )
  out = {'params': {}, 'batch_stats': {}}
  for key, (col, path) in names.items():
    out[col][path] = _flax_layout(path, np.asarray(given[key], np.float32))
  return traverse_util.unflatten_dict(out['params']), traverse_util.unflatten_dict(
    out['batch_stats']
  )


def resnet_to_torchvision(params, batch_stats) -> dict[str, np.ndarray]:
  """A torchvision ResNet state dict (without `fc.*`) from our ResNet."""
  flat = {
    'params': traverse_util.flatten_dict(params),
    'batch_stats': traverse_util.flatten_dict(batch_stats),
  }
  return {
    key: np.ascontiguousarray(_torch_layout(path, np.asarray(flat[col][path], np.float32)))
    for key, (col, path) in resnet_lib.state_dict_names(params, batch_stats).items()
  }


def bert_from_hf(tensors: dict, params) -> dict:
  """Our BERT params from a Hugging Face BERT state dict (BertModel or BertFor*)."""
  tensors = {k.removeprefix('bert.'): v for k, v in tensors.items()}
  names = bert_lib.state_dict_names(params)
  flat = traverse_util.flatten_dict(params)
  expected = {
    k: _torch_layout(path, np.empty(flat[path].shape, np.int8)).shape for k, path in names.items()
  }
  given = _check(expected, tensors, tables.HF_BERT_IGNORED, 'Hugging Face BERT checkpoint')
  return traverse_util.unflatten_dict(
    {path: _flax_layout(path, np.asarray(given[key], np.float32)) for key, path in names.items()}
  )


def bert_to_hf(params) -> dict[str, np.ndarray]:
  """A Hugging Face BertModel state dict (without the pooler) from our BERT."""
  flat = traverse_util.flatten_dict(params)
  return {
    key: np.ascontiguousarray(_torch_layout(path, np.asarray(flat[path], np.float32)))
    for key, path in bert_lib.state_dict_names(params).items()
  }


def hf_bert_config(directory) -> dict:
  """config.model.text fields from a Hugging Face BERT directory's config.json."""
  path = Path(directory) / 'config.json'
  try:
    hf = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(
      f'{path} is missing or is not JSON: a Hugging Face model directory has one.'
    ) from e
  hf = {**tables.HF_BERT_DEFAULTS, **hf}
  problems = []
  if hf.get('model_type') != 'bert':
    problems.append(f"model_type is {hf.get('model_type')!r}, not 'bert'")
  if hf.get('hidden_act', 'gelu') != 'gelu':
    problems.append(f"hidden_act is {hf['hidden_act']!r}; the tower uses exact 'gelu'")
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    problems.append(
      f"position_embedding_type is {hf['position_embedding_type']!r}; the tower has 'absolute'"
    )
  if hf.get('is_decoder') or hf.get('add_cross_attention'):
    problems.append('it is a decoder / has cross-attention')
  missing = [k for k in tables.HF_TO_TEXT if k not in hf]
  if missing:
    problems.append(f'config.json lacks {missing}')
  if problems:
    raise UserError(
      f'{directory} is not a BERT the text tower can express: ' + '; '.join(problems) + '.'
    )
  return {ours: hf[theirs] for theirs, ours in tables.HF_TO_TEXT.items()}


def hf_weights_file(directory) -> Path:
  """The weights file of a Hugging Face directory (safetensors preferred)."""
  for name in tables.HF_WEIGHT_FILES:
    if (Path(directory) / name).is_file():
      return Path(directory) / name
  raise UserError(f'{directory} has none of {", ".join(tables.HF_WEIGHT_FILES)}.')


def _split_spec(spec: str, kinds: tuple[str, ...], field: str) -> tuple[str, str]:
  kind, _, location = spec.partition(':')
  if kind not in kinds or not location:
    raise UserError(
      f'{field} = {spec!r}: expected one of ' + ', '.join(f"'{k}:PATH'" for k in kinds) + " or ''."
    )
  return kind, location


def text_init_dir(config) -> Path | None:
  """The Hugging Face directory `config.model.text.init` names, if any."""
  if not config.model.text.init:
    return None
  from medclip_jax.data import tokenizer  # pylint: disable=import-outside-toplevel

  _, location = _split_spec(config.model.text.init, ('hf',), 'config.model.text.init')
  return tokenizer.resolve(location)


def image_init_path(config) -> Path | None:
  """The torchvision state dict `config.model.image.init` names, if any."""
  if not config.model.image.init:
    return None
  _, location = _split_spec(config.model.image.init, ('torchvision',), 'config.model.image.init')
  return Path(location)


def resolve_pretrained_config(config) -> None:
  """Takes the text tower's sizes and tokenizer from `config.model.text.init`.

  A pretrained BERT fixes its architecture and vocabulary, so those config
  fields are overwritten (in place) by the checkpoint's config.json; its dropout
  is a training setting, which the config keeps. The tokenizer is named as the
  init names it: the bundled MiniLM by its name, not by where this machine installed
  it, so that a saved config resumes elsewhere; a directory by its absolute path (made
  so here), so that the run's model loads from any working directory.
  """
  from medclip_jax.data import tokenizer  # pylint: disable=import-outside-toplevel

  directory = text_init_dir(config)
  if directory is None:
    return
  for key, value in hf_bert_config(directory).items():
    if key != 'dropout_rate':
      config.model.text[key] = value
  location = config.model.text.init.partition(':')[2]
  if location != tokenizer.BUNDLED_MINILM:
    location = str(Path(location).absolute())
    config.model.text.init = f'hf:{location}'
  config.data.tokenizer = location


def load_pretrained(config, params, batch_stats) -> tuple[dict, dict]:
  """Tower weights from the checkpoints the config names, as NumPy subtrees.

  `params` and `batch_stats` give the expected structure (shape-only trees are
  enough). Returns `({top-level key: params subtree}, {key: batch_stats
  subtree})` for the towers that have an init; the caller places them.
  """
  new_params, new_batch_stats = {}, {}
  path = image_init_path(config)
  if path is not None:
    new_params['image_encoder'], new_batch_stats['image_encoder'] = resnet_from_torchvision(
      read_tensors(path), params['image_encoder'], batch_stats['image_encoder']
    )
  directory = text_init_dir(config)
  if directory is not None:
    new_params['text_encoder'] = bert_from_hf(
      read_tensors(hf_weights_file(directory)), params['text_encoder']
    )
  return new_params, new_batch_stats
