"""CLIP's symmetric InfoNCE over the global batch (`config.objectives.infonce`).

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

from medclip_jax import sharding


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


# Added to the logits of rows without an image (unpaired text-only records): finite, so
# that their zero-weighted terms keep finite gradients.
_EXCLUDED = -1e9


def _local_infonce_of_valid(image_emb, text_emb, scale, valid, *, axes):
  """`_local_infonce` over the rows with `valid` 1 only: the others are neither scored
  nor candidates."""
  all_text = jax.lax.all_gather(text_emb, axes, tiled=True)
  all_image = jax.lax.all_gather(image_emb, axes, tiled=True)
  all_valid = jax.lax.all_gather(valid, axes, tiled=True)
  local = image_emb.shape[0]
  labels = jax.lax.axis_index(axes) * local + jnp.arange(local)
  excluded = jnp.where(all_valid > 0, 0.0, _EXCLUDED)

  def terms(logits):
    logz = jax.nn.logsumexp(logits + excluded, axis=-1)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(valid > 0, logz - picked, 0.0))

  i2t = terms(scale * image_emb @ all_text.T)
  t2i = terms(scale * text_emb @ all_image.T)
  return jax.lax.psum(i2t + t2i, axes)


def infonce(image_emb, text_emb, logit_scale, mesh: Mesh, batch_axes=('data',), valid=None):
  """Symmetric InfoNCE, (image-to-text + text-to-image) / 2, mean over the batch.

  Args:
    image_emb: [B, D] L2-normalised image embeddings, batch sharded over
      `batch_axes`.
    text_emb: [B, D] L2-normalised text embeddings, row i pairs with image i.
    logit_scale: scalar multiplier of the cosine similarities (already
      exponentiated).
    mesh: the device mesh the batch lives on.
    batch_axes: mesh axes the batch dimension is sharded over.
    valid: optional [B], 0 for rows left out (text-only records without an
      image): the mean is over the other rows, against the other rows.

  Returns:
    Scalar float32 loss, identical whatever the number of devices.
  """
  image_emb = image_emb.astype(jnp.float32)
  text_emb = text_emb.astype(jnp.float32)
  logit_scale = jnp.asarray(logit_scale, jnp.float32)
  batch_axes = tuple(batch_axes)
  if valid is not None:
    valid = jnp.asarray(valid, jnp.float32)
    total = jax.shard_map(
      functools.partial(_local_infonce_of_valid, axes=batch_axes),
      mesh=mesh,
      in_specs=(P(batch_axes), P(batch_axes), P(), P(batch_axes)),
      out_specs=P(),
    )(image_emb, text_emb, logit_scale, valid)
    return total / (2 * jnp.maximum(jnp.sum(valid), 1.0))
  total = jax.shard_map(
    functools.partial(_local_infonce, axes=batch_axes),
    mesh=mesh,
    in_specs=(P(batch_axes), P(batch_axes), P()),
    out_specs=P(),
  )(image_emb, text_emb, logit_scale)
  return total / (2 * image_emb.shape[0])


def loss(outputs: dict, batch: dict, params: dict, mesh: Mesh, config) -> tuple[jax.Array, dict]:
  """The objective: InfoNCE of the model's embeddings at its (exponentiated) scale, over
  the rows that have an image (all but unpaired text-only records)."""
  del params, config  # the pairing is the batch order; no parameters or settings
  scale = jnp.exp(outputs['logit_scale'])
  value = infonce(
    outputs['image_embedding'],
    outputs['text_embedding'],
    scale,
    mesh,
    sharding.batch_axes(mesh),
    valid=batch.get('has_image'),
  )
  return value, {}
