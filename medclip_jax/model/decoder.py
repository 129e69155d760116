"""The light cross-modal decoder MMCLIP's objectives reconstruct with (objectives/attmim.py, entmlm.py).

A sequence of one modality (an image's masked cells, or a masked caption's
tokens) attends to itself and to the other modality (the caption's tokens, or
the image's cells), then a Dense head predicts what was masked: pixels of a
patch, or a token id. Pre-LayerNorm transformer layers, as M3AE's and MAE's
decoders; parameters float32, computed in float32 (the decoders are small
beside the towers).
"""

from flax import linen as nn
import jax.numpy as jnp


class _Layer(nn.Module):
  width: int
  heads: int

  @nn.compact
  def __call__(self, x, x_mask, context, context_mask, context_present):
    attend = lambda name: nn.MultiHeadDotProductAttention(
      self.heads, qkv_features=self.width, out_features=self.width, name=name
    )
    h = nn.LayerNorm(name='self_norm')(x)
    x = x + attend('self_attention')(h, h, mask=nn.make_attention_mask(x_mask, x_mask))
    h = nn.LayerNorm(name='cross_norm')(x)
    cross = attend('cross_attention')(h, context, mask=nn.make_attention_mask(x_mask, context_mask))
    # A row without the other modality (unpaired data) gets nothing from it, rather than
    # an average over masked-out positions.
    x = x + cross * context_present[:, None, None]
    h = nn.LayerNorm(name='mlp_norm')(x)
    h = nn.Dense(4 * self.width, name='mlp_in')(h)
    return x + nn.Dense(self.width, name='mlp_out')(nn.gelu(h))


class CrossDecoder(nn.Module):
  """queries [B, L, Dq] (mask [B, L]) and context [B, M, Dc] (mask [B, M]) -> predictions.

  Both sequences are projected to `width` and given learnt position embeddings
  (L and M are fixed by the config: grid cells, text length). `positions` [K]
  (flat indices into B*L, e.g. the masked tokens) restricts the head to those
  rows, which keeps a vocabulary-sized head affordable: [K, out_features];
  otherwise [B, L, out_features].
  """

  width: int
  depth: int
  heads: int
  out_features: int

  @nn.compact
  def __call__(
    self, queries, query_mask, context, context_mask, context_present=None, positions=None
  ):
    b, length, _ = queries.shape
    position = lambda name, n: self.param(name, nn.initializers.normal(0.02), (n, self.width))
    x = nn.Dense(self.width, name='query_in')(queries.astype(jnp.float32))
    x = x + position('query_position', length)
    c = nn.Dense(self.width, name='context_in')(context.astype(jnp.float32))
    c = c + position('context_position', context.shape[1])
    if context_present is None:
      context_present = jnp.ones((b,), jnp.float32)
    for i in range(self.depth):
      x = _Layer(self.width, self.heads, name=f'layer{i}')(
        x, query_mask, c, context_mask, context_present.astype(jnp.float32)
      )
    x = nn.LayerNorm(name='out_norm')(x)
    if positions is not None:
      x = x.reshape(b * length, self.width)[positions]
    return nn.Dense(self.out_features, name='head')(x)
