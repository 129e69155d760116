"""Model FLOPs of one training pair, counted from the config, and the devices' peak FLOP/s.

Model FLOPs are the matrix products the model needs, whatever the
implementation does (recomputation under remat or gradient caching is not
counted), so MFU compares configurations fairly. A multiply-add is 2 FLOPs.
A tower that trains costs 3 forward passes (the forward, and the backward's
two products, for the activations and the weights); a locked tower 1 (it runs
in inference mode, nothing flows back through it); a locked text tower whose
features are cached none. MMCLIP's objectives add their second pass through a
tower (AttMIM's masked image, EntMLM's masked caption; one pass where that
tower is locked) and their decoders (which always train). Counted:
convolutions, dense layers and attention's two products. Not counted:
normalisation, activations, pooling, embedding look-ups and the loss's batch x
batch logits (under 0.1% at batch 32k).
"""

import math
import time

import jax
import jax.numpy as jnp

from medclip_jax.interop import tables
from medclip_jax.objectives import attmim
from medclip_jax.objectives import entmlm

# Dense (no sparsity) bf16 peak FLOP/s per chip, from the vendors' data sheets,
# matched in order against `device_kind` ('NVIDIA H100 80GB HBM3', 'TPU v5 lite', ...).
PEAK_BF16_FLOPS = (
  ('H100 PCIe', 756e12),
  ('H100', 989e12),  # SXM
  ('H200', 989e12),
  ('A100', 312e12),
  ('TPU v4', 275e12),
  ('TPU v5 lite', 197e12),  # v5e
  ('TPU v5e', 197e12),
  ('TPU v5p', 459e12),
  ('TPU v5', 459e12),  # v5p reports itself as 'TPU v5'
)


def _conv_macs(size: int, kernel: int, stride: int, cin: int, cout: int) -> tuple[int, int]:
  """(output side, multiply-adds) of a square convolution padded by kernel // 2, as in
  `model.resnet`."""
  out = (size + 2 * (kernel // 2) - kernel) // stride + 1
  return out, out * out * kernel * kernel * cin * cout


def resnet_forward_flops(depth: int, width: int, image_size: int) -> float:
  """FLOPs of one image through `model.resnet.ResNet(depth, width)` at `image_size` px."""
  kind, layers = tables.RESNET_LAYOUTS[depth]
  expansion = 4 if kind == 'bottleneck' else 1
  size, macs = _conv_macs(image_size, 7, 2, 3, width)
  size = (size + 2 - 3) // 2 + 1  # the 3x3 stride-2 max-pool
  cin = width
  for stage, blocks in enumerate(layers):
    planes = width * 2**stage
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      if kind == 'bottleneck':
        _, first = _conv_macs(size, 1, 1, cin, planes)
        out, second = _conv_macs(size, 3, stride, planes, planes)
        _, third = _conv_macs(out, 1, 1, planes, planes * 4)
        macs += first + second + third
      else:
        out, first = _conv_macs(size, 3, stride, cin, planes)
        _, second = _conv_macs(out, 3, 1, planes, planes)
        macs += first + second
      if stride != 1 or cin != planes * expansion:  # the projection shortcut
        macs += _conv_macs(size, 1, stride, cin, planes * expansion)[1]
      size, cin = out, planes * expansion
  return 2.0 * macs


def resnet_features(depth: int, width: int) -> int:
  """The ResNet's pooled feature size (the image projection's input)."""
  kind, layers = tables.RESNET_LAYOUTS[depth]
  return width * 2 ** (len(layers) - 1) * (4 if kind == 'bottleneck' else 1)


def bert_forward_flops(num_layers: int, hidden: int, intermediate: int, tokens: int) -> float:
  """FLOPs of one `tokens`-long text through `model.bert.BertEncoder`: per layer the
  query/key/value/output projections, the two feed-forward layers, and attention's
  scores and weighted sum (tokens x tokens x hidden each)."""
  per_layer = tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * tokens**2 * hidden
  return 2.0 * num_layers * per_layer


def decoder_forward_flops(
  decoder, queries: int, query_dim: int, context: int, context_dim: int, scored: float
) -> float:
  """FLOPs of one example through `decoder` (a `model.decoder.CrossDecoder`): both inputs
  projected to its width; per layer self-attention over the `queries`, cross-attention to
  the `context`, a 4x MLP; its head on `scored` of the queries."""
  w = decoder.width
  per_layer = (
    queries * 4 * w * w  # self-attention's query, key, value and output projections
    + 2 * queries * queries * w  # its scores and weighted sum
    + queries * 2 * w * w  # cross-attention's query and output projections
    + context * 2 * w * w  # its key and value projections
    + 2 * queries * context * w
    + queries * 8 * w * w  # the MLP
  )
  inputs = queries * query_dim * w + context * context_dim * w
  return 2.0 * (inputs + decoder.depth * per_layer + scored * w * decoder.out_features)


def pair_flops(config, locked=(), text_cached: bool = False) -> dict:
  """{'image', 'text', 'heads', 'attmim', 'entmlm' (the last two where their weight is
  above 0), 'total'}: model FLOPs of one training pair of `config`.

  `locked`: the towers ('image_encoder', 'text_encoder') none of whose parameters
  train; `text_cached`: the locked text tower's features are precomputed.
  """
  image, text = config.model.image, config.model.text
  tokens = config.data.max_text_length
  passes = lambda tower: 1 if tower in locked else 3
  image_forward = resnet_forward_flops(image.depth, image.width, config.data.image_size)
  text_forward = bert_forward_flops(
    text.num_layers, text.hidden_size, text.intermediate_size, tokens
  )
  grid_features = resnet_features(image.depth, image.width)
  features = grid_features + text.hidden_size
  counts = {
    'image': passes('image_encoder') * image_forward,
    'text': 0.0 if text_cached else passes('text_encoder') * text_forward,
    # The two projections train with the heads.
    'heads': 3 * 2.0 * features * config.model.embed_dim,
  }
  weights = config.get('objectives', {})
  cells = attmim.grid_size(config) ** 2
  if weights.get('attmim', 0) > 0:
    decoder = decoder_forward_flops(
      attmim.decoder(config), cells, grid_features, tokens, text.hidden_size, cells
    )
    # The masking reads every cell and token through the heads, forward only.
    choose = 2.0 * (cells * grid_features + tokens * text.hidden_size) * config.model.embed_dim
    counts['attmim'] = passes('image_encoder') * image_forward + 3 * decoder + choose
  if weights.get('entmlm', 0) > 0:
    # Its head scores at most max_predictions of the batch's tokens.
    scored = config.entmlm.max_predictions * tokens
    decoder = decoder_forward_flops(
      entmlm.decoder(config), tokens, text.hidden_size, cells, grid_features, scored
    )
    counts['entmlm'] = passes('text_encoder') * text_forward + 3 * decoder
  counts['total'] = sum(counts.values())
  return counts


def measure_matmul_flops(seconds: float = 1.0, size: int = 1024) -> float:
  """FLOP/s of a float32 matrix product on the default device: the fastest of the
  products run in about `seconds` (a CPU's practical peak, which no table gives)."""
  x = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(x, x))  # compiles
  fastest, start = math.inf, time.perf_counter()
  while time.perf_counter() - start < seconds:
    begin = time.perf_counter()
    jax.block_until_ready(matmul(x, x))
    fastest = min(fastest, time.perf_counter() - begin)
  return 2.0 * size**3 / fastest


def peak_flops_per_device(device=None) -> tuple[float | None, str]:
  """(peak FLOP/s of one device, its source): the dense bf16 figure of
  `PEAK_BF16_FLOPS` ('table'), on CPU a measured float32 matrix product shared by
  the process's CPU devices ('measured matmul'), else (None, 'unknown')."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    # Forced host devices (--xla_force_host_platform_device_count) share the cores.
    return measure_matmul_flops() / jax.local_device_count(), 'measured matmul'
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device.device_kind.lower():
      return flops, 'table'
  return None, 'unknown'
