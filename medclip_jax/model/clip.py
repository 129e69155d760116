"""Two-tower CLIP model: image/text encoders, linear projections, logit scale."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from medclip_jax.model import masking

# Guards the normalisation against an all-zero embedding (e.g. a fully padded text).
_NORM_EPS = 1e-6


def _l2_normalize(x):
  x = x.astype(jnp.float32)
  # Clamping the squared norm (not the norm) keeps the gradient finite at zero.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _NORM_EPS**2))


class MedCLIP(nn.Module):
  """CLIP over any image encoder ``f(images, train)`` and text encoder
  ``g(input_ids, attention_mask, train)`` that return pooled features [B, C].

  Both towers are projected to ``embed_dim`` without bias and L2-normalised.
  ``logit_scale`` is the raw log temperature; objectives exponentiate it and
  the train step clamps it. Parameters an objective needs (the sigmoid loss's
  bias) are the objective's, not the model's.
  """

  image_encoder: nn.Module
  text_encoder: nn.Module
  embed_dim: int = 512
  logit_scale_init: float = math.log(1 / 0.07)

  def setup(self):
    # float32 heads whatever the towers' dtype (their features are float32):
    # the embeddings the loss compares keep full precision.
    self.image_projection = nn.Dense(
      self.embed_dim, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32
    )
    self.text_projection = nn.Dense(
      self.embed_dim, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32
    )
    # Explicit float32 dtype: a weak-typed scalar turns strongly typed after
    # the first optimiser update, which changes the jitted train step's
    # input signature and forces a recompile.
    self.logit_scale = self.param(
      'logit_scale', lambda _: jnp.asarray(self.logit_scale_init, jnp.float32)
    )

  def encode_image(self, images, train: bool):
    """Images [B, H, W, 3] -> unit-norm float32 embeddings [B, embed_dim]."""
    return _l2_normalize(self.image_projection(self.image_encoder(images, train=train)))

  def text_features(self, input_ids, attention_mask, train: bool):
    """Token ids and mask [B, T] -> the text tower's pooled features [B, C], unprojected."""
    return self.text_encoder(input_ids, attention_mask, train=train)

  def encode_text(self, input_ids, attention_mask, train: bool, features=None):
    """Token ids and mask [B, T] -> unit-norm float32 embeddings [B, embed_dim]; `features`,
    if given, are the text tower's output already (`text_features`), and it is not run."""
    if features is None:
      features = self.text_features(input_ids, attention_mask, train)
    return _l2_normalize(self.text_projection(features))

  def __call__(
    self,
    images,
    input_ids,
    attention_mask,
    train: bool,
    locked=(),
    text_features=None,
    mim: masking.MaskSpec | None = None,
    mlm_input_ids=None,
  ) -> dict:
    """The named outputs objectives read: unit-norm ``image_embedding`` and
    ``text_embedding`` [B, embed_dim] and the raw (log) ``logit_scale``.

    Towers named in `locked` ('image_encoder', 'text_encoder'), which are not
    trained, run in inference mode even when `train` (as LiT locks a tower):
    no dropout, BatchNorm on its running statistics. `text_features` are a
    locked text tower's outputs computed before (see `encode_text`).

    MMCLIP's objectives ask for more. With `mim` (AttMIM), the caption's tokens
    choose cells of the image's feature grid (`text_to_cell_scores`, no
    gradient), those patches of the image are blanked and the image tower runs
    again: ``mim_cells`` [B, N] (the mask), ``mim_grid`` [B, h, w, C] (the
    masked image's grid) and ``text_tokens`` [B, T, H] (the caption's token
    states). With `mlm_input_ids` (EntMLM's masked captions) the text tower
    also runs on those: ``mlm_tokens`` [B, T, H], beside the unmasked image's
    ``image_grid`` (and, without AttMIM, a locked tower's `text_features`
    still stand in for its unmasked pass). The
    second image pass updates BatchNorm's running statistics too; precise-BN
    (`config.eval.bn_recompute_batches` > 0, the default) recomputes them from
    unmasked images before every evaluation.
    """
    image_train = train and 'image_encoder' not in locked
    text_train = train and 'text_encoder' not in locked
    if mim is None and mlm_input_ids is None:
      return {
        'image_embedding': self.encode_image(images, image_train),
        'text_embedding': self.encode_text(input_ids, attention_mask, text_train, text_features),
        'logit_scale': self.logit_scale,
      }
    pooled, grid = self.image_encoder(images, train=image_train, grid=True)
    outputs = {
      'image_embedding': _l2_normalize(self.image_projection(pooled)),
      'logit_scale': self.logit_scale,
      'image_grid': grid,
    }
    if mim is None and text_features is not None:
      # EntMLM alone reads no unmasked token states: a locked tower's cached features do.
      outputs['text_embedding'] = self.encode_text(input_ids, attention_mask, False, text_features)
    else:
      text, tokens = self.text_encoder(input_ids, attention_mask, train=text_train, tokens=True)
      outputs['text_embedding'] = _l2_normalize(self.text_projection(text))
      outputs['text_tokens'] = tokens
    if mim is not None:
      scores = self.text_to_cell_scores(grid, tokens, attention_mask, mim.temperature)
      rng = self.make_rng('masking') if mim.noise > 0 else None
      cells = masking.top_cells(scores, mim.ratio, rng, mim.noise)
      masked = masking.mask_images(images, cells, grid.shape[1:3])
      outputs['mim_cells'] = cells
      outputs['mim_grid'] = self.image_encoder(masked, train=image_train, grid=True)[1]
    if mlm_input_ids is not None:
      outputs['mlm_tokens'] = self.text_encoder(
        mlm_input_ids, attention_mask, train=text_train, tokens=True
      )[1]
    return outputs

  def text_to_cell_scores(self, grid, tokens, attention_mask, temperature):
    """How much the caption's words attend to each cell of the image grid [B, N] (rows sum
    to 1; `masking.cell_scores`), in the shared space: cells and tokens go through the
    heads and are L2-normalised. [CLS] and [SEP] (the first and the last real token) and
    padding do not vote. No gradient flows back."""
    cells = _l2_normalize(self.image_projection(grid))
    words = _l2_normalize(self.text_projection(tokens))
    real = attention_mask.astype(bool)
    last = jnp.sum(real, axis=1, keepdims=True) - 1
    position = jnp.arange(real.shape[1])[None, :]
    voting = real & (position > 0) & (position != last)
    return masking.cell_scores(cells, words, voting, temperature)
