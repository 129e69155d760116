"""AttMIM (MMCLIP, arXiv 2407.19546): rebuild the image patches the caption attends to most.

`config.objectives.attmim` is its weight; `config.attmim` its settings. The
caption's words attend over the image tower's last feature grid in the shared
space (`MedCLIP.text_to_cell_scores`, no gradient), the top `mask_ratio` of
cells become the mask (with `noise`, varied around them), those patches of the
image are blanked and the image tower runs again; a light decoder
(`model/decoder.py`) reads the masked image's cells beside the caption's
tokens and predicts the masked patches, scored by a normalised-pixel MSE on
masked patches only (as MAE). The contrastive objectives still see the whole
image. The gradient reaches the image tower through the masked pass and the
text tower through the decoder's cross-attention. Logs `attmim/mask_ratio`,
the share of cells masked.
"""

import math

import jax.numpy as jnp

from medclip_jax.data import pipeline
from medclip_jax.interop import tables
from medclip_jax.model import masking
from medclip_jax.model import resnet
from medclip_jax.model.decoder import CrossDecoder

DECODER = 'attmim_decoder'
# config.attmim's defaults (configs/default.py documents each).
DEFAULTS = {
  'mask_ratio': 0.5,
  'noise': 0.0,
  'temperature': 0.1,
  'normalize_target': True,
  'width': 256,
  'depth': 2,
  'heads': 4,
}


def spec(config) -> masking.MaskSpec:
  settings = config.attmim
  return masking.MaskSpec(settings.mask_ratio, settings.noise, settings.temperature)


def model_inputs(config, batch) -> dict:
  """What MedCLIP.__call__ computes for this objective (see there)."""
  del batch
  return {'mim': spec(config)}


def grid_size(config) -> int:
  """Cells a side of the image tower's last grid (its strided convolutions pad, so a
  size that is not a multiple of the stride rounds up; AttMIM itself needs multiples)."""
  return math.ceil(config.data.image_size / resnet.STRIDE)


def image_features(model_config) -> int:
  """The channels of the image tower's last grid (512 / 2048 for ResNet18 / 50 at width 64)."""
  kind, _ = tables.RESNET_LAYOUTS[model_config.image.depth]
  return model_config.image.width * (32 if kind == 'bottleneck' else 8)


def decoder(config) -> CrossDecoder:
  patch = config.data.image_size // grid_size(config)
  settings = config.attmim
  return CrossDecoder(settings.width, settings.depth, settings.heads, patch * patch * 3)


def init_params(config, rng) -> dict:
  cells, length = grid_size(config) ** 2, config.data.max_text_length
  variables = decoder(config).init(
    rng,
    jnp.zeros((1, cells, image_features(config.model))),
    jnp.ones((1, cells), bool),
    jnp.zeros((1, length, config.model.text.hidden_size)),
    jnp.ones((1, length), bool),
  )
  return {DECODER: variables['params']}


def loss(outputs, batch, params, mesh, config):
  del mesh  # global arrays; XLA places the decoder's work
  grid = outputs['mim_grid']
  b, h, w, c = grid.shape
  predicted = decoder(config).apply(
    {'params': params[DECODER]},
    grid.reshape(b, h * w, c),
    jnp.ones((b, h * w), bool),
    outputs['text_tokens'],
    batch['attention_mask'].astype(bool),
  )
  images = pipeline.normalize(batch['image'], config.data.mean, config.data.std)
  cells = outputs['mim_cells']
  with_image = jnp.ones(b, bool)
  if 'has_image' in batch:  # a text-only record's blank image is not rebuilt
    with_image = batch['has_image'] > 0
    cells = cells & with_image[:, None]
  value = masking.masked_patch_mse(
    predicted, images, cells, (h, w), normalize_target=config.attmim.normalize_target
  )
  # The share of each image's cells masked, over the rows that have an image.
  masked = jnp.sum(cells) / jnp.maximum(jnp.sum(with_image) * h * w, 1)
  return value, {'mask_ratio': masked}
