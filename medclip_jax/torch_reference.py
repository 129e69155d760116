"""The PyTorch eager reference for `python -m medclip_jax.benchmark --reference=torch`.

The same towers as the config's (torchvision's ResNet at its depth and width,
transformers' BERT at its sizes, random weights), the same batch, the same
thread count as XLA uses (every core), channels-last images (PyTorch's faster
CPU layout), and the same step: both towers forward (a locked tower, all of
whose parameter groups have learning-rate multiplier 0, in eval mode without
gradients, as the JAX step runs it), the symmetric InfoNCE loss, backward,
clipping to the config's global norm, AdamW (PyTorch's fused kernel). torch is
not a training dependency: it comes with `pip install '.[torch]'` (or
requirements-test.txt).

`measure` times them in a process of its own (see there why).
"""

import concurrent.futures
import importlib.util
import multiprocessing
import os

import numpy as np

from medclip_jax import cli
from medclip_jax.errors import UserError
from medclip_jax.training import optimizer as optimizer_lib


def _torch():
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  return torch


def locked_towers(config) -> set[str]:
  """The towers whose learning-rate multiplier is 0 under the default parameter groups."""
  frozen = optimizer_lib.frozen_groups(config.train)
  return {tower for tower in ('image_encoder', 'text_encoder') if tower in frozen}


class _Model:
  """The two towers and their projections, as torch modules."""

  def __init__(self, config):
    torch = _torch()
    from medclip_jax import torch_model  # pylint: disable=import-outside-toplevel
    from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel
    from transformers import BertModel  # pylint: disable=import-outside-toplevel

    self.torch = torch
    image = config.model.image
    self.image = torch_model.image_encoder(image.depth, image.width)
    self.image = self.image.to(memory_format=torch.channels_last)
    self.text = BertModel(export.hf_bert_config(config.model.text), add_pooling_layer=False)
    features = self.image(torch.zeros(1, 3, 64, 64)).shape[-1]
    dim = config.model.embed_dim
    self.image_projection = torch.nn.Linear(features, dim, bias=False)
    self.text_projection = torch.nn.Linear(config.model.text.hidden_size, dim, bias=False)
    self.logit_scale = torch.nn.Parameter(torch.tensor(float(config.model.logit_scale_init)))
    self.pooling = config.model.text.pooling
    self.mean = torch.tensor(config.data.mean).view(1, 3, 1, 1) * 255
    self.std = torch.tensor(config.data.std).view(1, 3, 1, 1) * 255

  def inputs(self, local_batch):
    torch = self.torch
    pixels = torch.from_numpy(np.asarray(local_batch['image'])).permute(0, 3, 1, 2).float()
    pixels = ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
    ids = torch.from_numpy(np.asarray(local_batch['input_ids'], np.int64))
    mask = torch.from_numpy(np.asarray(local_batch['attention_mask'], np.int64))
    return pixels, ids, mask

  def image_features(self, pixels):
    return self.image(pixels)

  def text_features(self, ids, mask):
    hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
    if self.pooling == 'cls':
      return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def train_step(config, local_batch):
  """A callable that runs one PyTorch training step on `local_batch` (see the module
  docstring), the optimizer's state carried from call to call."""
  model = _Model(config)
  torch = model.torch
  locked = locked_towers(config)
  pixels, ids, mask = model.inputs(local_batch)
  towers = {'image_encoder': model.image, 'text_encoder': model.text}
  trained = [p for name, t in towers.items() if name not in locked for p in t.parameters()]
  trained += [*model.image_projection.parameters(), *model.text_projection.parameters()]
  trained.append(model.logit_scale)
  # The fused kernel: PyTorch's fastest AdamW on CPU (0.05 s a step for ResNet50 and
  # BERT-base's 134 M parameters, against 0.18-0.38 s for the default; BENCHMARKS.md).
  optimizer = torch.optim.AdamW(
    trained, lr=1e-4, weight_decay=config.train.weight_decay, fused=True
  )
  for name, tower in towers.items():
    tower.train(name not in locked)
    tower.requires_grad_(name not in locked)

  def features(name, fn, *args):
    if name in locked:
      with torch.no_grad():
        return fn(*args)
    return fn(*args)

  def step():
    optimizer.zero_grad(set_to_none=True)
    image = features('image_encoder', model.image_features, pixels)
    text = features('text_encoder', model.text_features, ids, mask)
    image = torch.nn.functional.normalize(model.image_projection(image), dim=-1)
    text = torch.nn.functional.normalize(model.text_projection(text), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(logits))
    loss = (
      torch.nn.functional.cross_entropy(logits, labels)
      + torch.nn.functional.cross_entropy(logits.T, labels)
    ) / 2
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, config.train.grad_clip_norm)
    optimizer.step()

  return step


def tower_steps(config, local_batch) -> dict:
  """{'image', 'text'}: callables that run each tower's forward and backward alone, in train
  mode."""
  model = _Model(config)
  pixels, ids, mask = model.inputs(local_batch)
  model.image.train()
  model.text.train()

  def backward(fn, module):
    def once():
      module.zero_grad(set_to_none=True)
      fn().square().sum().backward()

    return once

  return {
    'image': backward(lambda: model.image_features(pixels), model.image),
    'text': backward(lambda: model.text_features(ids, mask), model.text),
  }


def _measure(config, local_batch, steps: int, warmup: int, towers: bool) -> dict:
  """The reference process's work: torch's version and threads, and the median seconds of
  its training step ('step') and, with `towers`, of each tower alone ('image', 'text')."""
  from medclip_jax.benchmark import median_seconds  # pylint: disable=import-outside-toplevel

  torch = _torch()
  figures = {
    'version': torch.__version__,
    'threads': torch.get_num_threads(),
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
  }
  figures['step'] = median_seconds(train_step(config, local_batch), steps, warmup)
  if towers:
    for tower, fn in tower_steps(config, local_batch).items():
      figures[tower] = median_seconds(fn, steps, warmup)
  return figures


def measure(config, local_batch, steps: int, warmup: int, towers: bool = False) -> dict:
  """`_measure` in a fresh process that has ended when this returns, so that neither side
  runs beside the other's memory: with torch's steps between its own (in this process or
  another), JAX's full-size step took 12-13 s instead of 10 on this project's 2-core VM,
  its fresh pages costing several times the system time (BENCHMARKS.md, 2026-12-06).
  It runs in the environment the user started the command in, without the GLIBC_TUNABLES
  `cli.run` gave this process: PyTorch as its users run it."""
  if importlib.util.find_spec('torch') is None:
    raise UserError(
      '--reference=torch needs PyTorch, which training does not install: pip install '
      "'.[torch]' (or pip install -r requirements-test.txt), then run the benchmark again."
    )
  batch = {key: np.asarray(value) for key, value in local_batch.items()}
  context = multiprocessing.get_context('spawn')  # a fresh interpreter, without JAX's state
  added = {name: os.environ.pop(name) for name in cli.added_environment()}
  try:  # the process starts at the submit, with os.environ as it is then
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
      return pool.submit(_measure, config, batch, steps, warmup, towers).result()
  finally:
    os.environ.update(added)
