"""medclip_jax: medical CLIP in JAX/Flax. See docs/ARCHITECTURE.md for the layout."""
