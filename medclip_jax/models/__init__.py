"""Model definitions: ResNet image encoder, BERT text encoder, MedCLIP."""

import jax.numpy as jnp

from medclip_jax.models.bert import BertEncoder
from medclip_jax.models.clip import MedCLIP
from medclip_jax.models.resnet import ResNet

__all__ = ['BertEncoder', 'MedCLIP', 'ResNet', 'build', 'build_text_encoder']

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def build_text_encoder(text, dtype=jnp.float32) -> BertEncoder:
  """The BERT tower described by ``config.model.text``."""
  return BertEncoder(
    vocab_size=text.vocab_size,
    hidden_size=text.hidden_size,
    num_layers=text.num_layers,
    num_heads=text.num_heads,
    intermediate_size=text.intermediate_size,
    max_position_embeddings=text.max_position_embeddings,
    type_vocab_size=text.type_vocab_size,
    layer_norm_eps=text.layer_norm_eps,
    dropout_rate=text.dropout_rate,
    pooling=text.pooling,
    dtype=dtype,
  )


def build(model_config) -> MedCLIP:
  """The two-tower model described by ``config.model``."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(
      f'config.model.dtype must be one of {sorted(_DTYPES)}, got {model_config.dtype!r}.'
    )
  if model_config.loss not in ('infonce', 'sigmoid'):
    raise ValueError(
      f"config.model.loss must be 'infonce' or 'sigmoid', got {model_config.loss!r}."
    )
  dtype = _DTYPES[model_config.dtype]
  image, text = model_config.image, model_config.text
  return MedCLIP(
    image_encoder=ResNet(
      depth=image.depth, width=image.width, bn_momentum=image.bn_momentum, dtype=dtype
    ),
    text_encoder=build_text_encoder(text, dtype),
    embed_dim=model_config.embed_dim,
    logit_scale_init=model_config.logit_scale_init,
    logit_bias_init=model_config.logit_bias_init if model_config.loss == 'sigmoid' else None,
    dtype=dtype,
  )
