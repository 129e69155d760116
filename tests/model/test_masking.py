"""AttMIM's blocks: attention over cells, the top-r mask, masked images, the patch loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclip_jax.model import masking

# Two rows of eight cell scores; the second has ties (0.5 at cells 1, 2, 6; 0.1 at 3, 7).
_SCORES = np.array(
  [
    [0.05, 0.30, 0.10, 0.20, 0.01, 0.15, 0.12, 0.07],
    [0.00, 0.50, 0.50, 0.10, 0.20, 0.30, 0.50, 0.10],
  ],
  np.float32,
)


def _expected_top(scores, k):
  """The k highest per row, ties to the lower index, as a boolean mask."""
  order = np.argsort(-scores, axis=-1, kind='stable')[:, :k]
  mask = np.zeros(scores.shape, bool)
  np.put_along_axis(mask, order, True, axis=-1)
  return mask


@pytest.mark.parametrize('ratio, k', [(0.25, 2), (0.5, 4), (0.375, 3), (1.0, 8)])
def test_top_cells_is_exactly_the_top_ratio(ratio, k):
  top = jax.jit(masking.top_cells, static_argnums=1)(jnp.asarray(_SCORES), ratio)
  assert top.dtype == jnp.bool_
  np.testing.assert_array_equal(np.sum(top, axis=-1), [k, k])
  np.testing.assert_array_equal(top, _expected_top(_SCORES, k))


def test_top_cells_breaks_ties_by_lower_index():
  # Row 1 at k = 2: cells 1 and 2 among the three 0.5s; at k = 6, cell 3 of the two 0.1s.
  top = np.asarray(masking.top_cells(jnp.asarray(_SCORES), 0.25))
  np.testing.assert_array_equal(np.flatnonzero(top[1]), [1, 2])
  top = np.asarray(masking.top_cells(jnp.asarray(_SCORES), 0.75))
  np.testing.assert_array_equal(np.flatnonzero(top[1]), [1, 2, 3, 4, 5, 6])
  flat = np.asarray(masking.top_cells(jnp.full((1, 6), 0.2), 0.5))
  np.testing.assert_array_equal(np.flatnonzero(flat[0]), [0, 1, 2])


@pytest.mark.parametrize(
  'ratio, cells, k', [(0.0, 8, 0), (0.01, 8, 1), (0.5, 49, 24), (0.6, 49, 29), (1.0, 4, 4)]
)
def test_num_masked(ratio, cells, k):
  assert masking.num_masked(cells, ratio) == k


def test_top_cells_masks_nothing_at_ratio_zero_and_rejects_bad_ratios():
  assert not np.any(masking.top_cells(jnp.asarray(_SCORES), 0.0))
  for ratio in (-0.1, 1.5):
    with pytest.raises(ValueError, match='ratio'):
      masking.top_cells(jnp.asarray(_SCORES), ratio)


def test_top_cells_noise():
  scores = jnp.asarray(_SCORES)
  plain = np.asarray(masking.top_cells(scores, 0.5))
  np.testing.assert_array_equal(
    masking.top_cells(scores, 0.5, rng=jax.random.key(0), noise=0.0), plain
  )
  noisy = jax.jit(functools.partial(masking.top_cells, ratio=0.5, noise=5.0))
  masks = [np.asarray(noisy(scores, rng=jax.random.key(seed))) for seed in range(8)]
  for mask in masks:
    np.testing.assert_array_equal(np.sum(mask, axis=-1), [4, 4])
  assert any(not np.array_equal(mask, plain) for mask in masks)
  assert not all(np.array_equal(mask, masks[0]) for mask in masks)


def _planted():
  """A 2x2 grid of one-hot cells; image 0's tokens are cell 2's vector, image 1's cell 1's.
  Image 1 has two padded tokens; image 2 has no real token."""
  grid = jnp.broadcast_to(jnp.eye(4).reshape(1, 2, 2, 4), (3, 2, 2, 4))
  tokens = jnp.stack([jnp.tile(jnp.eye(4)[i], (4, 1)) for i in (2, 1, 0)])
  token_mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
  return grid, tokens, token_mask


def test_cell_scores_attend_to_the_matching_cell():
  grid, tokens, token_mask = _planted()
  scores = np.asarray(masking.cell_scores(grid, tokens, token_mask))
  assert scores.shape == (3, 4)
  np.testing.assert_allclose(np.sum(scores, axis=-1), 1.0, rtol=1e-6)
  assert scores[0, 2] > 0.99 and scores[1, 1] > 0.99
  np.testing.assert_allclose(scores[2], 0.25)
  top = masking.top_cells(jnp.asarray(scores[:2]), 0.25)
  np.testing.assert_array_equal(np.flatnonzero(top[0]), [2])
  np.testing.assert_array_equal(np.flatnonzero(top[1]), [1])


def test_cell_scores_ignore_padded_tokens():
  grid, tokens, token_mask = _planted()
  scores = masking.cell_scores(grid, tokens, token_mask)
  padded = (token_mask == 0)[..., None]
  changed = jnp.where(padded, jax.random.normal(jax.random.key(1), tokens.shape) * 1e3, tokens)
  assert not np.array_equal(changed, tokens)
  np.testing.assert_array_equal(masking.cell_scores(grid, changed, token_mask), scores)


def test_cell_scores_pass_no_gradient():
  grid, tokens, token_mask = _planted()
  weights = jnp.arange(12.0).reshape(3, 4)
  loss = lambda g, t: jnp.sum(masking.cell_scores(g, t, token_mask) * weights)
  grid_grad, token_grad = jax.grad(loss, argnums=(0, 1))(grid, tokens)
  np.testing.assert_array_equal(grid_grad, 0.0)
  np.testing.assert_array_equal(token_grad, 0.0)


_CELLS = np.array([[True, False, False, False, True, True], [False] * 6])  # grid 2x3


def test_mask_images_zeroes_exactly_the_masked_patches():
  images = jax.random.normal(jax.random.key(2), (2, 4, 9, 3)) + 5.0  # patches 2x3
  masked = np.asarray(masking.mask_images(images, jnp.asarray(_CELLS), (2, 3)))
  expected = np.array(images)
  for b, cell in zip(*np.nonzero(_CELLS)):
    i, j = divmod(cell, 3)
    expected[b, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3] = 0.0
  np.testing.assert_array_equal(masked, expected)  # unmasked pixels bit-identical
  assert np.sum(masked == 0.0) == 3 * 2 * 3 * 3
  pixels = masking.patch_mask(jnp.asarray(_CELLS), (2, 3), (4, 9))
  np.testing.assert_array_equal(pixels, expected[..., 0] == 0.0)
  filled = masking.mask_images(images, jnp.asarray(_CELLS), (2, 3), fill=-1.0)
  np.testing.assert_array_equal(np.asarray(filled) == -1.0, masked == 0.0)


def test_mask_images_rejects_sizes_that_are_not_grid_multiples():
  with pytest.raises(ValueError, match='multiple'):
    masking.mask_images(jnp.zeros((2, 5, 9, 3)), jnp.asarray(_CELLS), (2, 3))
  with pytest.raises(ValueError, match='multiple'):
    masking.patchify(jnp.zeros((2, 4, 8, 3)), (2, 3))
  with pytest.raises(ValueError, match='cells'):
    masking.patch_mask(jnp.asarray(_CELLS[:, :4]), (2, 3), (4, 9))


def test_patchify_follows_the_cell_layout():
  images = jax.random.normal(jax.random.key(3), (2, 4, 9, 3))
  patches = np.asarray(masking.patchify(images, (2, 3)))
  assert patches.shape == (2, 6, 2 * 3 * 3)
  np.testing.assert_array_equal(patches[1, 5], np.asarray(images)[1, 2:4, 6:9].reshape(-1))


def _normalised_target(images, grid_shape):
  patches = np.asarray(masking.patchify(images, grid_shape), np.float64)
  mean = patches.mean(-1, keepdims=True)
  return (patches - mean) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)


def test_masked_patch_mse_scores_only_masked_patches():
  images = jax.random.normal(jax.random.key(4), (2, 4, 9, 3))
  cells = jnp.asarray(_CELLS)
  target = _normalised_target(images, (2, 3))
  noise = np.asarray(jax.random.normal(jax.random.key(5), target.shape))
  predicted = np.where(_CELLS[..., None], target, noise).astype(np.float32)
  assert float(masking.masked_patch_mse(jnp.asarray(predicted), images, cells, (2, 3))) < 1e-10
  other = np.where(_CELLS[..., None], predicted, np.inf).astype(np.float32)
  assert float(masking.masked_patch_mse(jnp.asarray(other), images, cells, (2, 3))) < 1e-10
  assert float(masking.masked_patch_mse(jnp.asarray(noise), images, cells, (2, 3))) > 0.1


def test_masked_patch_mse_by_hand():
  # Grid 1x2 over a 2x2 image: cell 0 holds pixels [1, 3], cell 1 holds [2, 4].
  images = jnp.array([[[[1.0], [2.0]], [[3.0], [4.0]]]])
  predicted = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])
  first = jnp.array([[True, False]])
  both = jnp.array([[True, True]])
  mse = functools.partial(masking.masked_patch_mse, predicted, images, grid_shape=(1, 2))
  np.testing.assert_allclose(mse(first, normalize_target=False), (1 + 9) / 2)
  np.testing.assert_allclose(mse(both, normalize_target=False), ((1 + 9) / 2 + (1 + 9) / 2) / 2)
  # Normalised, both targets are [-1, 1] / sqrt(1 + eps).
  np.testing.assert_allclose(mse(first), 1 / (1 + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(mse(both), (1 + (4 + 0) / 2) / 2, rtol=1e-5)


def test_masked_patch_mse_is_zero_with_an_empty_mask():
  images = jax.random.normal(jax.random.key(6), (2, 4, 9, 3))
  none = jnp.zeros((2, 6), bool)
  loss = masking.masked_patch_mse(jnp.ones((2, 6, 18)), images, none, (2, 3))
  assert float(loss) == 0.0
  grad = jax.grad(masking.masked_patch_mse)(jnp.ones((2, 6, 18)), images, none, (2, 3))
  np.testing.assert_array_equal(grad, 0.0)
