"""medclip_jax: medical CLIP in JAX/Flax. See docs/ARCHITECTURE.md for the layout.

`medclip_jax.MedCLIP.load(path)` gives a trained model to use (`inference.py`);
it is imported on first use, so that importing the package (as the PyTorch
export class does) loads no JAX.

Importing it also sets the XLA option measured best for CPU runs
(BENCHMARKS.md), unless XLA_FLAGS already names it: convolutions off YNNPACK,
whose convolution gradients are several times slower than XLA's own, while
matmuls stay on it. It only takes effect if jax is imported after this package,
as the commands do; other backends ignore it.
"""

import os

CPU_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'

if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {CPU_XLA_FLAGS}'.strip()


def __getattr__(name):
  if name == 'MedCLIP':
    from medclip_jax.inference import MedCLIP  # pylint: disable=import-outside-toplevel

    return MedCLIP
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
