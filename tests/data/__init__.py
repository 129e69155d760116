"""Tests of medclip_jax.data."""
