"""The tests, mirroring the medclip_jax package; shared builders live in helpers.py."""
