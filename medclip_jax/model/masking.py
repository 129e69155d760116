"""Building blocks of AttMIM (MMCLIP, arXiv 2407.19546): attention-guided masked image modelling.

The caption's tokens attend over the image tower's last feature grid [B, h, w, D]
(7x7 at 224 px for ResNet-50); the cells they attend to most are masked, as
patches of the input image (cell (i, j) owns pixels [i*p_h:(i+1)*p_h,
j*p_w:(j+1)*p_w], p = H/h, W/w), and a light decoder (`model/decoder.py`)
reconstructs those patches from the masked image's grid, scored by a
normalised-pixel MSE on the masked patches only (as MAE). Cells are numbered
row-major, N = h*w.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """How AttMIM masks (config.attmim): the share of cells, the noise added to their scores
  (`top_cells`), and the temperature of the word-to-cell attention (`cell_scores`)."""

  ratio: float
  noise: float
  temperature: float


def cell_scores(grid, tokens, token_mask, temperature=0.1):
  """Text-to-image attention [B, N] over the cells of `grid`: per real token a softmax
  over the cells of cosine / `temperature` (MGCA's word-to-patch attention), averaged
  over the real tokens; each row sums to 1, uniform for a row with no real token.

  `grid` [B, h, w, D] and `tokens` [B, T, D] are projected to the shared space and
  L2-normalised per cell / token by the caller; `token_mask` [B, T] is 1 for real
  tokens, 0 for padding and special ones. No gradient flows back: the mask is
  chosen, not learnt.
  """
  grid = jax.lax.stop_gradient(grid).astype(jnp.float32)
  tokens = jax.lax.stop_gradient(tokens).astype(jnp.float32)
  b, h, w, d = grid.shape
  cells = grid.reshape(b, h * w, d)
  attention = jax.nn.softmax(jnp.einsum('btd,bnd->btn', tokens, cells) / temperature, axis=-1)
  real = token_mask.astype(bool)[..., None]
  # `where`, not a product: a padded token's vector, whatever it holds, cannot leak in.
  summed = jnp.sum(jnp.where(real, attention, 0.0), axis=1)
  count = jnp.sum(real, axis=1)
  return jnp.where(count > 0, summed / jnp.maximum(count, 1), 1.0 / (h * w))


def num_masked(num_cells: int, ratio: float) -> int:
  """The number of cells `top_cells` masks: round(ratio * N), at least 1 if ratio > 0."""
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f'The mask ratio must be in [0, 1], got {ratio}.')
  return max(1, round(ratio * num_cells)) if ratio > 0 else 0


def top_cells(scores, ratio, rng=None, noise=0.0):
  """Boolean mask [B, N]: exactly `num_masked(N, ratio)` cells per row, those of the highest
  `scores`, ties to the lower index. `ratio` and `noise` are static Python floats.

  With `rng` and `noise` > 0, uniform noise in [0, noise * the row's score range) is
  added first, so that the mask varies around the attended cells: at noise 1 any cell
  may displace the most attended one, small values only reorder near-ties.
  """
  k = num_masked(scores.shape[-1], ratio)
  scores = scores.astype(jnp.float32)
  if rng is not None and noise > 0:
    spread = jnp.max(scores, axis=-1, keepdims=True) - jnp.min(scores, axis=-1, keepdims=True)
    scores = scores + noise * spread * jax.random.uniform(rng, scores.shape)
  # lax.top_k returns equal values lower index first.
  _, index = jax.lax.top_k(scores, k)
  return jnp.any(jax.nn.one_hot(index, scores.shape[-1], dtype=jnp.bool_), axis=-2)


def _patch_size(grid_shape, image_shape):
  (h, w), (height, width) = grid_shape, image_shape
  if height % h or width % w:
    raise ValueError(
      f'The image size {height}x{width} must be a multiple of the grid size {h}x{w}.'
    )
  return height // h, width // w


def patch_mask(cells, grid_shape, image_shape):
  """The cell mask [B, N] of a grid (h, w) as a pixel mask [B, H, W] of images (H, W)."""
  (h, w), (p_h, p_w) = grid_shape, _patch_size(grid_shape, image_shape)
  if cells.shape[-1] != h * w:
    raise ValueError(f'A {h}x{w} grid has {h * w} cells, the mask has {cells.shape[-1]}.')
  b = cells.shape[0]
  pixels = jnp.broadcast_to(cells.reshape(b, h, 1, w, 1), (b, h, p_h, w, p_w))
  return pixels.reshape(b, h * p_h, w * p_w)


def mask_images(images, cells, grid_shape, fill=0.0):
  """`images` [B, H, W, C] (normalised) with the patches of masked cells set to `fill`;
  0 is the dataset mean after normalisation."""
  pixels = patch_mask(cells, grid_shape, images.shape[1:3])
  return jnp.where(pixels[..., None], jnp.asarray(fill, images.dtype), images)


def patchify(images, grid_shape):
  """`images` [B, H, W, C] -> patches [B, N, p_h*p_w*C], each one row-major (p_h, p_w, C)."""
  (h, w), (p_h, p_w) = grid_shape, _patch_size(grid_shape, images.shape[1:3])
  b, _, _, c = images.shape
  patches = images.reshape(b, h, p_h, w, p_w, c).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, h * w, p_h * p_w * c)


def masked_patch_mse(predicted, images, cells, grid_shape, normalize_target=True, eps=1e-6):
  """Mean squared error of `predicted` [B, N, p_h*p_w*C] against the patches of `images`
  over the masked `cells` [B, N] only; 0 when none is masked.

  With `normalize_target` each target patch is standardised by its own pixels' mean
  and (population) variance, as MAE's normalised-pixel target.
  """
  target = patchify(images, grid_shape).astype(jnp.float32)
  if predicted.shape != target.shape:
    raise ValueError(
      f'Predicted patches {predicted.shape} do not match the targets {target.shape}.'
    )
  if normalize_target:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True)
    target = (target - mean) * jax.lax.rsqrt(var + eps)
  per_patch = jnp.mean(jnp.square(predicted.astype(jnp.float32) - target), axis=-1)
  # `where`: unmasked predictions, even non-finite ones, do not reach the loss.
  total = jnp.sum(jnp.where(cells, per_patch, 0.0))
  return total / jnp.maximum(jnp.sum(cells), 1)
