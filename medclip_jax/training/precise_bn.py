"""Precise BatchNorm: the image tower's statistics recomputed with the current weights.

Running averages kept during training mix statistics of many past weight
values; after the last update they no longer describe the network being
evaluated. Before each evaluation the trainer recomputes them over
`config.eval.bn_recompute_batches` training batches, and the final checkpoint
keeps the recomputed statistics, so what is exported is what was evaluated.
"""

import jax
import jax.numpy as jnp

from medclip_jax import sharding
from medclip_jax.data import pipeline
from medclip_jax.model.clip import MedCLIP


class PreciseBN:
  """Recomputes BatchNorm statistics; compiled once, run before every evaluation."""

  def __init__(self, model: MedCLIP, config, mesh):
    exact = model.clone(image_encoder=model.image_encoder.clone(bn_momentum=0.0))
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    self.mesh = mesh

    def batch_statistics(params, batch_stats, images):
      _, updates = exact.apply(
        {'params': params, 'batch_stats': batch_stats},
        pipeline.normalize(images, mean, std),
        train=True,
        method=MedCLIP.encode_image,
        mutable=['batch_stats'],
      )
      return updates['batch_stats']

    self._batch_statistics = jax.jit(batch_statistics)

  def __call__(self, params, batch_stats, batches):
    """BatchNorm statistics of the current weights, averaged over `batches`.

    Every BatchNorm layer sees each batch with momentum 0 (so its 'running'
    statistic is exactly that batch's), and the results are averaged.
    """
    total, count = None, 0
    for local in batches:
      images = sharding.to_global_batch(local['image'], self.mesh)
      stats = self._batch_statistics(params, batch_stats, images)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
      count += 1
    if count == 0:
      return batch_stats
    return jax.tree.map(lambda x: x / count, total)
