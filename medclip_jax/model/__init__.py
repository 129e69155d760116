"""The two towers and MedCLIP, built from ``config.model``."""

import jax
import jax.numpy as jnp

from medclip_jax.interop import tables
from medclip_jax.model.bert import BertEncoder
from medclip_jax.model.clip import MedCLIP
from medclip_jax.model.resnet import ResNet

__all__ = ['BertEncoder', 'MedCLIP', 'ResNet', 'build', 'build_text_encoder']

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def build_text_encoder(text, dtype=jnp.float32) -> BertEncoder:
  """The BERT tower described by ``config.model.text``."""
  sizes = {field: text[field] for field in tables.HF_TO_TEXT.values()}
  return BertEncoder(**sizes, pooling=text.pooling, dtype=dtype)


def build(model_config) -> MedCLIP:
  """The two-tower model described by ``config.model``."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(
      f'config.model.dtype must be one of {sorted(_DTYPES)}, got {model_config.dtype!r}.'
    )
  dtype = _DTYPES[model_config.dtype]
  image, text = model_config.image, model_config.text
  ops = image.get('ops', 'auto')  # configs saved before it existed have none
  if ops == 'auto':
    ops = 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return MedCLIP(
    image_encoder=ResNet(
      depth=image.depth, width=image.width, bn_momentum=image.bn_momentum, dtype=dtype, ops=ops
    ),
    text_encoder=build_text_encoder(text, dtype),
    embed_dim=model_config.embed_dim,
    logit_scale_init=model_config.logit_scale_init,
    dtype=dtype,
  )
