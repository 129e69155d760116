"""Weights in and out: PyTorch conversion, pretrained initialisation, export.

Kept free of imports so that `tables` loads without JAX (the PyTorch model uses it).
"""
