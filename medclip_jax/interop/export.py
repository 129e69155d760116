"""A training checkpoint as PyTorch-loadable weights (the command: `python -m medclip_jax.export`).

An export directory holds (names in `tables.EXPORT_FILES`)
  image_encoder.safetensors  torchvision ResNet keys, BatchNorm running stats included (no fc.*)
  text_encoder/              a directory BertModel.from_pretrained and AutoTokenizer.from_pretrained load
  heads.safetensors          image_projection.weight, text_projection.weight, logit_scale
                             (and logit_bias, with the sigmoid objective)
  medclip.json               embedding size, pooling, image size, mean/std, max text length, step, config

`medclip_jax.torch_model.MedCLIP.from_export(DIR)` rebuilds the two-tower model
in PyTorch from these files.
"""

import json
import os
from pathlib import Path

import ml_collections
import numpy as np

from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from medclip_jax.interop import convert
from medclip_jax.interop import load
from medclip_jax.interop import tables


def _save_safetensors(tensors: dict, path: Path) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  # The 'pt' format tag tells transformers these are PyTorch-layout tensors.
  save_file(
    {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={'format': 'pt'}
  )


def hf_bert_config(text_config: ml_collections.ConfigDict):
  """transformers' BertConfig of `config.model.text` (the export's, and the benchmark's reference)."""
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  return BertConfig(
    **{hf: text_config[ours] for hf, ours in tables.HF_TO_TEXT.items()},
    hidden_act='gelu',
    attention_probs_dropout_prob=text_config.dropout_rate,
    architectures=['BertModel'],
  )


def export(workdir: str, out: str, step: int | None = None) -> Path:
  """Writes the export of `step` (default: the latest) of `workdir` to `out`."""
  out = _check_out(workdir, Path(out))
  # The model's variables only: neither the optimizer state nor MMCLIP's decoders are read.
  loaded = load.from_workdir(workdir, step)
  config = loaded.config
  params, batch_stats = loaded.variables['params'], loaded.variables['batch_stats']
  tokenizer = tokenizer_lib.load(config.data.tokenizer)  # before anything is written

  text_dir = out / tables.EXPORT_FILES['text_encoder']
  text_dir.mkdir(parents=True, exist_ok=True)
  _save_safetensors(
    convert.resnet_to_torchvision(params['image_encoder'], batch_stats['image_encoder']),
    out / tables.EXPORT_FILES['image_encoder'],
  )
  _save_safetensors(
    convert.bert_to_hf(params['text_encoder']), text_dir / tables.HF_WEIGHT_FILES[0]
  )
  hf_bert_config(config.model.text).save_pretrained(str(text_dir))
  tokenizer.save_pretrained(str(text_dir))
  heads = {}
  for key, name in tables.HEADS.items():
    if key in params:  # logit_bias only with the sigmoid objective
      value = params[key]
      # Projections are Dense kernels [in, out]; torch's Linear weight is [out, in].
      heads[name] = np.asarray(value['kernel']).T if isinstance(value, dict) else np.asarray(value)
  _save_safetensors(heads, out / tables.EXPORT_FILES['heads'])
  metadata = {
    'embed_dim': config.model.embed_dim,
    'image': {
      'depth': config.model.image.depth,
      'width': config.model.image.width,
      'image_size': config.data.image_size,
      'mean': list(config.data.mean),
      'std': list(config.data.std),
      # prepare's --max_side: images given to the model are read at it (data/images.py).
      'max_side': loaded.max_side,
    },
    'text': {'pooling': config.model.text.pooling, 'max_length': config.data.max_text_length},
    'objectives': {k: float(v) for k, v in config.objectives.items() if float(v)},
    # Read by code written for exports before objectives were config entries.
    'loss': next(k for k, v in config.objectives.items() if float(v)),
    'step': loaded.step,
    'config': config.to_dict(),
  }
  (out / tables.EXPORT_FILES['metadata']).write_text(
    json.dumps(metadata, indent=2, default=list) + '\n'
  )
  _make_readable(out)
  return out


def _check_out(workdir: str, out: Path) -> Path:
  """`out`, or a UserError where a file stands or where the export would go into a workdir
  (whose export file would then make `load` read it as that export, not its checkpoints)."""
  existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
  if not existing.is_dir():
    raise UserError(
      f'Cannot export to {out}: {existing} is a file. Give a new directory, or an export '
      'directory to replace.'
    )
  if (out / 'checkpoints').exists() or out.resolve() == Path(workdir).resolve():
    raise UserError(
      f'Cannot export into {out}: it is a training workdir, which would then load as this '
      'export and no longer as its checkpoints. Give another directory (e.g. exported/NAME).'
    )
  return out


def _make_readable(out: Path) -> None:
  """Gives every exported file the mode a plain write would: safetensors writes 0600."""
  umask = os.umask(0)
  os.umask(umask)
  for path in out.rglob('*'):
    if path.is_file():
      path.chmod(0o666 & ~umask)
