"""Export a training checkpoint as PyTorch-loadable weights.

  python -m medclip_jax.export --workdir=runs/demo [--step=N] --out=exported/demo

writes
  image_encoder.safetensors  torchvision ResNet keys, BatchNorm running stats included (no fc.*)
  text_encoder/              a directory BertModel.from_pretrained and AutoTokenizer.from_pretrained load
  heads.safetensors          image_projection.weight, text_projection.weight, logit_scale
                             (and logit_bias, with the sigmoid loss)
  medclip.json               embedding size, pooling, image size, mean/std, max text length, step, config

`medclip_jax.torch_model.MedCLIP.from_export(DIR)` rebuilds the two-tower model
in PyTorch from these files.
"""

import json
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging

from medclip_jax import checkpointing
from medclip_jax import convert
from medclip_jax import train
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError

EXPORT_METADATA = 'medclip.json'


def _save_safetensors(tensors: dict, path: Path) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  # The 'pt' format tag tells transformers these are PyTorch-layout tensors.
  save_file(
    {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={'format': 'pt'}
  )


def _hf_bert_config(text_config: ml_collections.ConfigDict):
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  return BertConfig(
    vocab_size=text_config.vocab_size,
    hidden_size=text_config.hidden_size,
    num_hidden_layers=text_config.num_layers,
    num_attention_heads=text_config.num_heads,
    intermediate_size=text_config.intermediate_size,
    hidden_act='gelu',
    hidden_dropout_prob=text_config.dropout_rate,
    attention_probs_dropout_prob=text_config.dropout_rate,
    max_position_embeddings=text_config.max_position_embeddings,
    type_vocab_size=text_config.type_vocab_size,
    layer_norm_eps=text_config.layer_norm_eps,
    architectures=['BertModel'],
  )


def export(workdir: str, out: str, step: int | None = None) -> Path:
  """Writes the export of `step` (default: the latest) of `workdir` to `out`."""
  checkpointer = checkpointing.Checkpointer(workdir, keep=1_000_000)
  steps = checkpointer.all_steps()
  if not steps:
    raise UserError(
      f'No checkpoints in {checkpointer.directory}: --workdir must be the directory a training '
      'run wrote (it holds checkpoints/<step>/).'
    )
  step = max(steps) if step is None else step
  if step not in steps:
    raise UserError(
      f'No checkpoint for step {step} in {checkpointer.directory}; there are {steps}.'
    )
  config = ml_collections.ConfigDict(checkpointer.restore_config(step))
  _, _, abstract_state = train.model_and_optimizer(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = checkpointer.restore_state(
    step,
    checkpointing.abstract_like(abstract_state, jax.tree.map(lambda _: device, abstract_state)),
  )
  checkpointer.close()
  params = jax.device_get(state.params)
  batch_stats = jax.device_get(state.batch_stats)

  out = Path(out)
  text_dir = out / 'text_encoder'
  text_dir.mkdir(parents=True, exist_ok=True)
  _save_safetensors(
    convert.resnet_to_torchvision(params['image_encoder'], batch_stats['image_encoder']),
    out / 'image_encoder.safetensors',
  )
  _save_safetensors(convert.bert_to_hf(params['text_encoder']), text_dir / 'model.safetensors')
  _hf_bert_config(config.model.text).save_pretrained(str(text_dir))
  tokenizer_lib.load(config.data.tokenizer).save_pretrained(str(text_dir))
  heads = {
    'image_projection.weight': np.asarray(params['image_projection']['kernel']).T,
    'text_projection.weight': np.asarray(params['text_projection']['kernel']).T,
    'logit_scale': np.asarray(params['logit_scale'], np.float32),
  }
  if 'logit_bias' in params:
    heads['logit_bias'] = np.asarray(params['logit_bias'], np.float32)
  _save_safetensors(heads, out / 'heads.safetensors')
  metadata = {
    'embed_dim': config.model.embed_dim,
    'image': {
      'depth': config.model.image.depth,
      'width': config.model.image.width,
      'image_size': config.data.image_size,
      'mean': list(config.data.mean),
      'std': list(config.data.std),
    },
    'text': {'pooling': config.model.text.pooling, 'max_length': config.data.max_text_length},
    'loss': config.model.loss,
    'step': step,
    'config': config.to_dict(),
  }
  (out / EXPORT_METADATA).write_text(json.dumps(metadata, indent=2, default=list) + '\n')
  return out


_WORKDIR = flags.DEFINE_string('workdir', None, 'Training run directory (holds checkpoints/).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    out = export(_WORKDIR.value, _OUT.value, _STEP.value)
  except UserError as e:
    print(f'\nerror: {e}\n', file=sys.stderr)
    sys.exit(2)
  print(f'exported to {out}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
