"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch larger than memory.

`config.train.grad_cache_chunks` = K > 1 splits every device's rows into K
chunks and computes the plain step's loss and gradients in three phases:

  1. the towers embed each chunk in turn, without gradients (nothing kept but
     the embeddings);
  2. the objectives run once on the embeddings of the whole global batch, and
     their gradient with respect to the embeddings and the parameters is
     taken (the logit scale's and the objectives' own parameters' gradients
     are complete here);
  3. each chunk is embedded again under `jax.vjp` and its rows' embedding
     gradients are pulled back to the parameters, summed over the chunks in a
     scan, so that memory holds one chunk's activations at a time.

Chunk c holds chunk c of every device's rows (the batch is reshaped
[devices, K, rows] and transposed), so no chunk needs another device's data;
the objectives see the rows in the batch's own order. A chunk's dropout key is
the step's key folded with c, the same in phases 1 and 3, so the recomputed
embeddings are the ones the loss was taken at (they differ from the plain
step's single mask over the whole batch).

BatchNorm in train mode normalises each chunk with that chunk's statistics,
as a per-device batch K times smaller would: with a trained image tower the
gradients are those of K smaller BatchNorm batches, not the plain step's (a
locked tower, on its running statistics, couples no rows and is exact). The
running statistics move by the mean of the K chunks' phase-3 updates: the
running mean of a layer's input as the whole batch would move it, the running
variance by the chunks' mean variance (without the spread between chunks).
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from medclip_jax import sharding


def value_and_grad(embed, objective, params, batch_stats, rows, rng, chunks: int, mesh):
  """The plain step's ((loss, (metrics, batch_stats)), grads), `chunks` chunks at a time.

  Args:
    embed: (params, rows, rng) -> ({name: embeddings [n, D]}, new batch_stats):
      the towers in train mode on n rows of `rows`.
    objective: (embeddings of the global batch, params) -> (loss, metrics).
    params: the parameters differentiated (towers, heads, objectives').
    batch_stats: the BatchNorm statistics `embed` starts from.
    rows: {name: [B, ...]} the per-row inputs of `embed`, sharded over the
      mesh's batch axes; every device's row count must divide by `chunks`.
    rng: the step's dropout key.
    chunks: the number of chunks of every device's rows.
    mesh: the mesh the batch is sharded over.
  """
  axes = sharding.batch_axes(mesh)
  devices = mesh.size
  chunked_sharding = NamedSharding(mesh, P(None, axes))
  batch_sharding = NamedSharding(mesh, P(axes))

  def split(x):
    # [B, ...] -> [chunks, B / chunks, ...]: chunk c takes rows c of each device's block.
    x = x.reshape(devices, chunks, x.shape[0] // (devices * chunks), *x.shape[1:]).swapaxes(0, 1)
    x = x.reshape(chunks, -1, *x.shape[3:])
    return jax.lax.with_sharding_constraint(x, chunked_sharding)

  def join(x):
    # The inverse of `split`: the rows back in the batch's order.
    x = x.reshape(chunks, devices, -1, *x.shape[2:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x.reshape(-1, *x.shape[3:]), batch_sharding)

  chunk_rows = jax.tree.map(split, rows)
  indices = jnp.arange(chunks)

  def embed_chunk(p, chunk, index):
    return embed(p, chunk, jax.random.fold_in(rng, index))

  # Phase 1: embeddings only; the towers' activations are dropped chunk by chunk.
  embeddings = jax.lax.map(
    lambda xs: embed_chunk(jax.lax.stop_gradient(params), *xs)[0], (chunk_rows, indices)
  )
  # Phase 2: the loss of the whole batch and its gradient at the embeddings.
  (loss, metrics), (embedding_grads, grads) = jax.value_and_grad(
    objective, argnums=(0, 1), has_aux=True
  )(jax.tree.map(join, embeddings), params)

  # Phase 3: each chunk's backward pass, parameter gradients summed.
  def backward(carry, xs):
    grads, stats_change = carry
    chunk, cotangent, index = xs
    _, pull_back, new_stats = jax.vjp(lambda p: embed_chunk(p, chunk, index), params, has_aux=True)
    (chunk_grads,) = pull_back(cotangent)
    grads = jax.tree.map(jnp.add, grads, chunk_grads)
    # Changes, not values, are summed: statistics no chunk moves stay bitwise as they were.
    stats_change = jax.tree.map(lambda s, n, o: s + (n - o), stats_change, new_stats, batch_stats)
    return (grads, stats_change), None

  start = (grads, jax.tree.map(jnp.zeros_like, batch_stats))
  xs = (chunk_rows, jax.tree.map(split, embedding_grads), indices)
  (grads, stats_change), _ = jax.lax.scan(backward, start, xs)
  new_stats = jax.tree.map(lambda o, s: o + s / chunks, batch_stats, stats_change)
  return (loss, (metrics, new_stats)), grads
