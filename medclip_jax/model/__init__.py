"""The two towers and MedCLIP, built from ``config.model``."""

import jax
import jax.numpy as jnp

from medclip_jax.interop import tables
from medclip_jax.model.bert import BertEncoder
from medclip_jax.model.clip import MedCLIP
from medclip_jax.model.resnet import ResNet

__all__ = [
  'BertEncoder',
  'DTYPES',
  'MedCLIP',
  'ResNet',
  'build',
  'build_text_encoder',
  'compiler_options',
]

# config.model.dtype and the towers' own dtype -> the compute dtype.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def _dtype(model_config, tower: str):
  """The compute dtype of `tower` ('image' or 'text'): its own `dtype`, or
  ``config.model.dtype`` where that is '' (or absent, in configs saved before it)."""
  name = model_config[tower].get('dtype', '') or model_config.dtype
  if name not in DTYPES:
    raise ValueError(f'The {tower} tower dtype must be one of {sorted(DTYPES)}, got {name!r}.')
  return DTYPES[name]


def compiler_options(model_config) -> dict:
  """XLA options for compiling a step of this model: on a CPU backend with a tower
  rematerialised, the pass that lets XLA:CPU undo it is off.

  XLA:CPU drops jax.checkpoint's optimization barriers early and CSE then merges
  the recomputation back into the forward pass, keeping every activation;
  XLA:GPU drops them only after scheduling, so it needs nothing.
  """
  remat = {model_config.image.get('remat', 'none'), model_config.text.get('remat', 'none')}
  if jax.default_backend() == 'cpu' and remat != {'none'}:
    return {'xla_disable_hlo_passes': 'cse_barrier_expander'}
  return {}


def build_text_encoder(text, dtype=jnp.float32) -> BertEncoder:
  """The BERT tower described by ``config.model.text``."""
  sizes = {field: text[field] for field in tables.HF_TO_TEXT.values()}
  remat = text.get('remat', 'none')  # older configs and Hugging Face configs have none
  return BertEncoder(**sizes, pooling=text.pooling, dtype=dtype, remat=remat)


def build(model_config) -> MedCLIP:
  """The two-tower model described by ``config.model``; the heads compute in float32."""
  image, text = model_config.image, model_config.text
  ops = image.get('ops', 'auto')  # configs saved before it existed have none
  if ops == 'auto':
    ops = 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return MedCLIP(
    image_encoder=ResNet(
      depth=image.depth,
      width=image.width,
      bn_momentum=image.bn_momentum,
      dtype=_dtype(model_config, 'image'),
      ops=ops,
      remat=image.get('remat', 'none'),  # as ops
    ),
    text_encoder=build_text_encoder(text, _dtype(model_config, 'text')),
    embed_dim=model_config.embed_dim,
    logit_scale_init=model_config.logit_scale_init,
  )
