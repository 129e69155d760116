"""medclip_jax: medical CLIP in JAX/Flax. See docs/ARCHITECTURE.md for the layout.

`medclip_jax.MedCLIP.load(path)` gives a trained model to use (`inference.py`);
it is imported on first use, so that importing the package (as the PyTorch
export class does) loads no JAX.
"""


def __getattr__(name):
  if name == 'MedCLIP':
    from medclip_jax.inference import MedCLIP  # pylint: disable=import-outside-toplevel

    return MedCLIP
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
