"""Contrastive losses over the global batch.

Each device holds a slice of the batch. Rather than gathering the full
B_global x B_global similarity matrix, every device scores its own rows
against all-gathered columns (B_local x B_global), so per-device memory grows
as B_global * B_local. The transpose of `all_gather` is a reduce-scatter, so
gradients are exact.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P


def _cross_entropy_rows(logits, labels):
  """Sum over rows of softmax cross-entropy against integer labels."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(logz - picked)


def _local_infonce(image_emb, text_emb, scale, *, axes):
  """Sum of the per-row InfoNCE terms of this device's rows."""
  all_text = jax.lax.all_gather(text_emb, axes, tiled=True)
  all_image = jax.lax.all_gather(image_emb, axes, tiled=True)
  local = image_emb.shape[0]
  first = jax.lax.axis_index(axes) * local
  labels = first + jnp.arange(local)
  i2t = _cross_entropy_rows(scale * image_emb @ all_text.T, labels)
  t2i = _cross_entropy_rows(scale * text_emb @ all_image.T, labels)
  return jax.lax.psum(i2t + t2i, axes)


def infonce(image_emb, text_emb, logit_scale, mesh: Mesh, batch_axes=('data',)):
  """Symmetric InfoNCE, (image-to-text + text-to-image) / 2, mean over the batch.

  Args:
    image_emb: [B, D] L2-normalised image embeddings, batch sharded over
      `batch_axes`.
    text_emb: [B, D] L2-normalised text embeddings, row i pairs with image i.
    logit_scale: scalar multiplier of the cosine similarities (already
      exponentiated).
    mesh: the device mesh the batch lives on.
    batch_axes: mesh axes the batch dimension is sharded over.

  Returns:
    Scalar float32 loss, identical whatever the number of devices.
  """
  image_emb = image_emb.astype(jnp.float32)
  text_emb = text_emb.astype(jnp.float32)
  logit_scale = jnp.asarray(logit_scale, jnp.float32)
  batch_axes = tuple(batch_axes)
  total = jax.shard_map(
    functools.partial(_local_infonce, axes=batch_axes),
    mesh=mesh,
    in_specs=(P(batch_axes), P(batch_axes), P()),
    out_specs=P(),
  )(image_emb, text_emb, logit_scale)
  return total / (2 * image_emb.shape[0])


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
  Inputs are sharded as for `infonce`; the result does not depend on the
  number of devices.
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
