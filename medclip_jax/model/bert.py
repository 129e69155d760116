"""BERT text encoder with Hugging Face ``BertModel``'s structure and names.

The parameter tree mirrors HF's ``state_dict`` (``embeddings.word_embeddings``,
``encoder.layer.<i>.attention.self.query`` ...) so pretrained checkpoints load
through a renaming table; see :func:`state_dict_names`.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from medclip_jax.model import lean_layers
from medclip_jax.model.dropout import Dropout

# HF initialises every Linear and Embedding with normal(0.02).
_init = nn.initializers.normal(stddev=0.02)

ModuleDef = Callable[..., nn.Module]

# BertEncoder(remat=...) -> the jax.checkpoint policy each layer is recomputed
# under in the backward pass: 'full' keeps only the layer's input, 'dots' keeps
# the outputs of matmuls without batch dimensions too (the projections and the
# feed-forward, not the attention scores, which grow with the length squared).
# 'none' rematerialises nothing.
REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class _SelfAttention(nn.Module):
  """HF ``BertSelfAttention``: query/key/value projections and attention."""

  num_heads: int
  dense: ModuleDef
  dropout: ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, x, attention_mask):
    batch, length, hidden = x.shape
    head_dim = hidden // self.num_heads

    def heads(name):
      return self.dense(hidden, name=name)(x).reshape(batch, length, self.num_heads, head_dim)

    q, k, v = heads('query'), heads('key'), heads('value')
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(head_dim)
    # Mask and softmax in float32 so padded keys get exactly zero weight
    # even under bf16 compute; the bias value follows HF (finfo(dtype).min).
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(self.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1)
    probs = self.dropout()(probs.astype(self.dtype))
    return jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, length, hidden)


class _ResidualOutput(nn.Module):
  """HF ``BertSelfOutput`` / ``BertOutput``: dense, dropout, residual, LayerNorm."""

  dense: ModuleDef
  layer_norm: ModuleDef
  dropout: ModuleDef

  @nn.compact
  def __call__(self, x, residual):
    x = self.dropout()(self.dense(residual.shape[-1], name='dense')(x))
    return self.layer_norm(name='LayerNorm')(x + residual)


class _Attention(nn.Module):
  """HF ``BertAttention``: submodules ``self`` and ``output``."""

  num_heads: int
  dense: ModuleDef
  layer_norm: ModuleDef
  dropout: ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, x, attention_mask):
    attended = _SelfAttention(self.num_heads, self.dense, self.dropout, self.dtype, name='self')(
      x, attention_mask
    )
    return _ResidualOutput(self.dense, self.layer_norm, self.dropout, name='output')(attended, x)


class _Intermediate(nn.Module):
  """HF ``BertIntermediate``: dense + exact (erf) GELU."""

  features: int
  dense: ModuleDef

  @nn.compact
  def __call__(self, x):
    return lean_layers.gelu(self.dense(self.features, name='dense')(x))


class _Layer(nn.Module):
  """One post-LayerNorm transformer block (HF ``BertLayer``)."""

  num_heads: int
  intermediate_size: int
  dense: ModuleDef
  layer_norm: ModuleDef
  dropout: ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, x, attention_mask):
    x = _Attention(
      self.num_heads, self.dense, self.layer_norm, self.dropout, self.dtype, name='attention'
    )(x, attention_mask)
    h = _Intermediate(self.intermediate_size, self.dense, name='intermediate')(x)
    return _ResidualOutput(self.dense, self.layer_norm, self.dropout, name='output')(h, x)


class _LayerList(nn.Module):
  """HF ``ModuleList`` of blocks, named '0', '1', ..."""

  num_layers: int
  layer: ModuleDef

  @nn.compact
  def __call__(self, x, attention_mask):
    for i in range(self.num_layers):
      x = self.layer(name=str(i))(x, attention_mask)
    return x


class _Encoder(nn.Module):
  """HF ``BertEncoder``: holds the ``layer`` list."""

  num_layers: int
  layer: ModuleDef

  @nn.compact
  def __call__(self, x, attention_mask):
    return _LayerList(self.num_layers, self.layer, name='layer')(x, attention_mask)


class _Embeddings(nn.Module):
  """HF ``BertEmbeddings``: word + position + token type, LayerNorm, dropout."""

  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm: ModuleDef
  dropout: ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, input_ids, token_type_ids):
    embed = functools.partial(
      nn.Embed, features=self.hidden_size, embedding_init=_init, dtype=self.dtype
    )
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (
      embed(self.vocab_size, name='word_embeddings')(input_ids)
      + embed(self.max_position_embeddings, name='position_embeddings')(positions)
      + embed(self.type_vocab_size, name='token_type_embeddings')(token_type_ids)
    )
    return self.dropout()(self.layer_norm(name='LayerNorm')(x))


class BertEncoder(nn.Module):
  """HF ``BertModel`` encoder returning a pooled text embedding [B, hidden].

  ``pooling='cls'`` takes the final hidden state of the first token (no
  pooler dense); ``'mean'`` averages the tokens where ``attention_mask == 1``.
  Dropout uses the ``'dropout'`` rng and is active only when ``train``.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  pooling: str = 'cls'
  dtype: Any = jnp.float32
  # 'none' or a key of REMAT_POLICIES; the parameters are the same.
  remat: str = 'none'

  def __post_init__(self):
    if self.pooling not in ('cls', 'mean'):
      raise ValueError(f"Unknown pooling {self.pooling!r}; expected 'cls' or 'mean'.")
    if self.remat != 'none' and self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"BertEncoder remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {self.remat!r}."
      )
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.'
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, input_ids, attention_mask, train: bool, token_type_ids=None, tokens=False):
    """Pooled features [B, hidden] float32; with `tokens`, also every token's final hidden
    state [B, T, hidden] (float32), for objectives that look at words."""
    if input_ids.shape[1] > self.max_position_embeddings:
      # Embedding lookups clamp out-of-range indices silently; fail loudly instead.
      raise ValueError(
        f'Sequence length {input_ids.shape[1]} exceeds '
        f'max_position_embeddings {self.max_position_embeddings}.'
      )
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    dense = functools.partial(
      nn.Dense, kernel_init=_init, dtype=self.dtype, param_dtype=jnp.float32
    )
    layer_norm = functools.partial(
      lean_layers.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32
    )
    dropout = functools.partial(Dropout, rate=self.dropout_rate, deterministic=not train)

    x = _Embeddings(
      self.vocab_size,
      self.hidden_size,
      self.max_position_embeddings,
      self.type_vocab_size,
      layer_norm,
      dropout,
      self.dtype,
      name='embeddings',
    )(input_ids, token_type_ids)
    # The train flag is bound in `dropout`, so a layer takes only arrays: no static_argnums.
    layer_class = (
      _Layer if self.remat == 'none' else nn.remat(_Layer, policy=REMAT_POLICIES[self.remat])
    )
    layer = functools.partial(
      layer_class, self.num_heads, self.intermediate_size, dense, layer_norm, dropout, self.dtype
    )
    x = _Encoder(self.num_layers, layer, name='encoder')(x, attention_mask)

    x = x.astype(jnp.float32)
    if self.pooling == 'cls':
      pooled = x[:, 0]
    else:
      mask = attention_mask.astype(jnp.float32)[:, :, None]
      # max(count, 1) keeps an all-padding row finite (it pools to zeros).
      pooled = jnp.sum(x * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return (pooled, x) if tokens else pooled


_LEAF_TO_HF = {'kernel': 'weight', 'embedding': 'weight', 'scale': 'weight', 'bias': 'bias'}


def state_dict_names(params) -> dict[str, tuple]:
  """Map each HF ``BertModel`` state_dict key to its path in ``params``.

  E.g. ``'encoder.layer.0.attention.self.query.weight' -> ('encoder', 'layer',
  '0', 'attention', 'self', 'query', 'kernel')``. Dense kernels are
  ``[in, out]`` here and ``[out, in]`` in HF (transpose them); embedding
  tables and LayerNorm vectors have the same layout. Keys are those of
  ``BertModel`` itself (no ``'bert.'`` prefix); HF's ``pooler.*`` and the
  ``embeddings.position_ids`` buffer have no counterpart.
  """
  return {
    '.'.join(path[:-1] + (_LEAF_TO_HF[path[-1]],)): path
    for path in traverse_util.flatten_dict(params)
  }
