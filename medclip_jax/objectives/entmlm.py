"""EntMLM (MMCLIP, arXiv 2407.19546): predict a caption's masked medical entities from it and the image.

`config.objectives.entmlm` is its weight; `config.entmlm` its settings. The
input pipeline masks every token of every entity the lexicon finds in the
training caption (`data/entities.py`; `lexicon`, a file the user can replace),
topped up with random whole words to `ratio` of its tokens where it has few;
the text tower reads the masked caption and a light decoder
(`model/decoder.py`) with cross-attention to the unmasked image's feature grid
predicts the masked tokens (cross-entropy on masked positions only). At most
`max_predictions` of the batch's tokens are scored, the first in batch order,
so that the vocabulary-sized head stays affordable; the rest are counted in
`entmlm/unscored`. The gradient reaches the text tower (when it trains)
through the masked pass and the image tower through the cross-attention. Logs the share of real
tokens masked (`entmlm/mask_ratio`), of captions with at least one entity
(`entmlm/with_entity`) and the accuracy on masked tokens.
"""

import math

import jax
import jax.numpy as jnp

from medclip_jax.data import entities
from medclip_jax.model.decoder import CrossDecoder
from medclip_jax.objectives import attmim

DECODER = 'entmlm_decoder'
# config.entmlm's defaults (configs/default.py documents each).
DEFAULTS = {
  'ratio': entities.DEFAULT_RATIO,
  'lexicon': '',
  'max_predictions': 0.25,
  'width': 256,
  'depth': 2,
  'heads': 4,
}
# Columns the input pipeline adds to each training example for this objective.
COLUMNS = ('mlm_input_ids', 'mlm_labels', 'mlm_entities')


def model_inputs(config, batch) -> dict:
  """What MedCLIP.__call__ computes for this objective (see there)."""
  del config
  return {'mlm_input_ids': batch['mlm_input_ids']}


def decoder(config) -> CrossDecoder:
  settings = config.entmlm
  return CrossDecoder(settings.width, settings.depth, settings.heads, config.model.text.vocab_size)


def max_predictions(config) -> int:
  """How many masked tokens of a global batch are scored at most."""
  return math.ceil(
    config.entmlm.max_predictions * config.train.batch_size * config.data.max_text_length
  )


def init_params(config, rng) -> dict:
  cells, length = attmim.grid_size(config) ** 2, config.data.max_text_length
  variables = decoder(config).init(
    rng,
    jnp.zeros((1, length, config.model.text.hidden_size)),
    jnp.ones((1, length), bool),
    jnp.zeros((1, cells, attmim.image_features(config.model))),
    jnp.ones((1, cells), bool),
  )
  return {DECODER: variables['params']}


def loss(outputs, batch, params, mesh, config):
  del mesh  # global arrays; XLA places the decoder's work
  labels = batch['mlm_labels'].reshape(-1)  # the original id where masked, -1 elsewhere
  masked = labels >= 0
  k = max_predictions(config)
  positions = jnp.nonzero(masked, size=k, fill_value=0)[0]
  scored = jnp.arange(k) < jnp.sum(masked)
  grid = outputs['image_grid']
  b, h, w, c = grid.shape
  logits = decoder(config).apply(
    {'params': params[DECODER]},
    outputs['mlm_tokens'],
    batch['attention_mask'].astype(bool),
    grid.reshape(b, h * w, c),
    jnp.ones((b, h * w), bool),
    # Text-only records (unpaired data) have no image to look at.
    batch.get('has_image'),
    positions=positions,
  )
  targets = labels[positions]
  picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  per_token = jax.nn.logsumexp(logits, axis=-1) - picked
  count = jnp.maximum(jnp.sum(scored), 1)
  value = jnp.sum(jnp.where(scored, per_token, 0.0)) / count
  correct = jnp.where(scored, jnp.argmax(logits, axis=-1) == targets, False)
  # Real tokens less [CLS] and [SEP]: what the pipeline may mask.
  maskable = jnp.sum(batch['attention_mask']) - 2 * b
  return value, {
    'mask_ratio': jnp.sum(masked) / jnp.maximum(maskable, 1),
    'with_entity': jnp.mean((batch['mlm_entities'] > 0).astype(jnp.float32)),
    'accuracy': jnp.sum(correct) / count,
    'unscored': jnp.maximum(jnp.sum(masked) - k, 0),
  }
