"""SigLIP's pairwise sigmoid loss over the global batch (`config.objectives.sigmoid`).

Texts travel round a ring of devices with `ppermute`, so no device ever holds
more than two blocks of texts or a B_global x B_global matrix. The objective
adds one parameter, the learnable logit bias, started at
`config.model.logit_bias_init`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from medclip_jax import sharding


def _local_sigmoid(image_emb, text_emb, scale, bias, *, axes, n_shards):
  """Sum of this device's image rows' pairwise terms, texts passed round a ring.

  Each device keeps its images; text blocks travel one hop per round, so after
  `n_shards` rounds every image has met every text while a device holds at most
  two blocks (B_local x B_local logits at a time, no all-gather).
  """
  me = jax.lax.axis_index(axes)
  local = image_emb.shape[0]
  diagonal = jnp.eye(local, dtype=bool)

  def block(texts, owner):
    logits = scale * image_emb @ texts.T + bias
    positive = diagonal & (owner == me)
    return -jnp.sum(jax.nn.log_sigmoid(jnp.where(positive, logits, -logits)))

  def round_(k, carry):
    total, texts = carry
    texts = jax.lax.ppermute(texts, axes, [(i, (i + 1) % n_shards) for i in range(n_shards)])
    return total + block(texts, (me - k) % n_shards), texts

  total, _ = jax.lax.fori_loop(1, n_shards, round_, (block(text_emb, me), text_emb))
  return jax.lax.psum(total, axes)


def sigmoid(image_emb, text_emb, logit_scale, logit_bias, mesh: Mesh, batch_axes=('data',)):
  """SigLIP's pairwise sigmoid loss: every (image, text) pair is a binary
  match/no-match decision, summed over texts and averaged over images.

  `logit_scale` is already exponentiated; `logit_bias` is the learnable offset
  (SigLIP starts it at -10 so that the many negatives do not dominate early).
  Inputs are sharded over `batch_axes`, row i of each pairing with row i of
  the other; the result does not depend on the number of devices.
  """
  batch_axes = tuple(batch_axes)
  n_shards = 1
  for axis in batch_axes:
    n_shards *= mesh.shape[axis]
  total = jax.shard_map(
    functools.partial(_local_sigmoid, axes=batch_axes, n_shards=n_shards),
    mesh=mesh,
    in_specs=(P(batch_axes), P(batch_axes), P(), P()),
    out_specs=P(),
  )(
    image_emb.astype(jnp.float32),
    text_emb.astype(jnp.float32),
    jnp.asarray(logit_scale, jnp.float32),
    jnp.asarray(logit_bias, jnp.float32),
  )
  return total / image_emb.shape[0]


def init_params(config, rng) -> dict:
  """The bias this objective learns, at SigLIP's start (-10: the many negatives must not dominate)."""
  del rng
  return {'logit_bias': jnp.asarray(config.model.logit_bias_init, jnp.float32)}


def loss(outputs: dict, batch: dict, params: dict, mesh: Mesh, config) -> tuple[jax.Array, dict]:
  """The objective: the sigmoid loss at the model's scale and this objective's bias."""
  del batch, config
  value = sigmoid(
    outputs['image_embedding'],
    outputs['text_embedding'],
    jnp.exp(outputs['logit_scale']),
    params['logit_bias'],
    mesh,
    sharding.batch_axes(mesh),
  )
  return value, {'logit_bias': params['logit_bias']}
