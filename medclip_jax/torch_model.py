"""The exported two-tower model in PyTorch: torchvision ResNet + transformers BERT + two Linear layers.

Imports torch, torchvision, transformers, safetensors, PIL and the JAX-free
parts of medclip_jax (`interop.tables`, `inference`'s shared methods,
`data.images`), so an export can be used wherever PyTorch is:

  from medclip_jax.torch_model import MedCLIP
  model = MedCLIP.from_export('exported/demo')        # in eval mode
  image = model.preprocess('scan.png').unsqueeze(0)   # a path, PIL image or array
  tokens = model.tokenize(['Axial CT of the brain showing a left frontal mass.'])
  with torch.no_grad():
    similarity = model.encode_image(image) @ model.encode_text(**tokens).T

It also has the JAX model's methods on NumPy (`medclip_jax.inference`):
`model.encode('scan.png', 'CT of the brain.')`, `zero_shot`, `caption`,
`index` and `search`, which rank as the JAX model ranks.
"""

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer
from transformers import BertModel

from medclip_jax import inference  # its shared methods import no JAX
from medclip_jax.data import ingest
from medclip_jax.errors import UserError
from medclip_jax.interop import tables  # plain data: no JAX

_BLOCKS = {
  'basic': torchvision.models.resnet.BasicBlock,
  'bottleneck': torchvision.models.resnet.Bottleneck,
}


class _ResNet(torchvision.models.resnet.ResNet):
  """torchvision's ResNet at any base width (torchvision fixes it at 64).

  Same modules and state_dict names as `torchvision.models.resnetNN()`; the
  classifier is replaced by the identity, as the encoder outputs pooled features.
  """

  def __init__(self, depth: int, width: int):
    nn.Module.__init__(self)  # torchvision's __init__ hard-codes width 64
    kind, layers = tables.RESNET_LAYOUTS[depth]
    block = _BLOCKS[kind]
    self._norm_layer = nn.BatchNorm2d
    self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
    self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Identity()


def image_encoder(depth: int, width: int) -> nn.Module:
  """A torchvision ResNet without classifier; `torchvision.models.resnetNN` itself at width 64."""
  if depth not in tables.RESNET_LAYOUTS:
    raise ValueError(f'ResNet depth must be one of {sorted(tables.RESNET_LAYOUTS)}, got {depth}.')
  if width == 64:
    model = getattr(torchvision.models, f'resnet{depth}')()
    model.fc = nn.Identity()
    return model
  return _ResNet(depth, width)


class MedCLIP(nn.Module, inference.Retrieval):
  """Image and text towers projected to a shared, L2-normalised embedding space.

  Besides the tensor methods (`encode_image`, `encode_text`, `forward`), it
  has the JAX model's (`medclip_jax.inference`): `encode_images`,
  `encode_texts`, `encode`, `zero_shot`, `caption`, `index` and `search`,
  taking file paths, PIL images or arrays, and ranking alike.
  """

  batch_size = 64  # images or texts per forward pass in those methods

  def __init__(
    self,
    image_encoder_module,
    text_encoder,
    image_projection,
    text_projection,
    logit_scale,
    metadata,
    logit_bias,
    tokenizer,
  ):
    super().__init__()
    self.image_encoder = image_encoder_module
    self.text_encoder = text_encoder
    self.image_projection = image_projection
    self.text_projection = text_projection
    self.logit_scale = logit_scale
    self.metadata = metadata
    self.logit_bias = logit_bias  # present when trained with the sigmoid loss
    self.tokenizer = tokenizer
    self.path, self.step = None, metadata['step']
    self.embed_dim = image_projection.out_features
    towers = {
      f'{prefix}.{k}': v.detach().numpy()
      for prefix, module in (('image', image_encoder_module), ('text', text_encoder))
      for k, v in module.state_dict().items()
      if v.is_floating_point()
    }
    self.fingerprint = inference.fingerprint(
      image_projection.weight.detach().numpy().T,
      text_projection.weight.detach().numpy().T,
      logit_scale.detach().numpy(),
      towers,
    )

  @classmethod
  def from_export(cls, directory) -> 'MedCLIP':
    """Loads what `python -m medclip_jax.export` wrote; a UserError if `directory` is no
    export or a file of it is missing or damaged."""
    directory = Path(directory)
    if not (directory / tables.EXPORT_FILES['metadata']).is_file():
      raise UserError(
        f'{directory} is not an export directory (it would hold '
        f'{tables.EXPORT_FILES["metadata"]}, written by python -m medclip_jax.export).'
      )
    try:
      return cls._read_export(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
      raise UserError(
        f'The export in {directory} is damaged or incomplete ({type(e).__name__}: '
        f'{str(e).strip().splitlines()[0] if str(e).strip() else e!r}). Export the training '
        'workdir again (python -m medclip_jax.export --workdir=... --out=...).'
      ) from e

  @classmethod
  def _read_export(cls, directory: Path) -> 'MedCLIP':
    files = {name: directory / path for name, path in tables.EXPORT_FILES.items()}
    metadata = json.loads(files['metadata'].read_text())
    image = image_encoder(metadata['image']['depth'], metadata['image']['width'])
    missing, unexpected = image.load_state_dict(
      load_file(str(files['image_encoder'])), strict=False
    )
    if missing or unexpected:
      raise ValueError(
        f'{files["image_encoder"].name} does not fit: missing {missing}, unexpected {unexpected}'
      )
    text_dir = files['text_encoder']
    text = BertModel.from_pretrained(str(text_dir), add_pooling_layer=False)
    heads = load_file(str(files['heads']))
    names = tables.HEADS

    def linear(weight):
      layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
      layer.weight.data.copy_(weight)
      return layer

    model = cls(
      image,
      text,
      linear(heads[names['image_projection']]),
      linear(heads[names['text_projection']]),
      nn.Parameter(heads[names['logit_scale']]),
      metadata,
      nn.Parameter(heads[names['logit_bias']]) if names['logit_bias'] in heads else None,
      AutoTokenizer.from_pretrained(str(text_dir)),
    )
    model.path = directory
    return model.eval()  # as transformers' from_pretrained: BatchNorm uses its running statistics

  def describe(self) -> str:
    return f'{self.path} (export, step {self.step})'

  def scale(self) -> float:
    return float(self.logit_scale.detach().exp().reshape(()))

  def preprocess(self, image) -> torch.Tensor:
    """An image (file path, PIL image or array) -> normalised [3, H, W] float tensor, read and
    cropped exactly as evaluation reads a prepared record (`medclip_jax.data.images`)."""
    size = self.metadata['image']['image_size']
    max_side = self.metadata['image'].get('max_side', ingest.DEFAULT_MAX_SIDE)
    pixels = inference.read_image(image, size, max_side).astype(np.float32)
    mean = np.asarray(self.metadata['image']['mean'], np.float32) * 255
    std = np.asarray(self.metadata['image']['std'], np.float32) * 255
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())

  def tokenize(self, texts: list[str]) -> dict:
    """Captions -> {'input_ids', 'attention_mask'} tensors, padded as in training."""
    tokens = self.tokenizer(
      texts,
      max_length=self.metadata['text']['max_length'],
      padding='max_length',
      truncation=True,
      return_tensors='pt',
    )
    return {'input_ids': tokens['input_ids'], 'attention_mask': tokens['attention_mask']}

  def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised images [B, 3, H, W] -> unit-norm embeddings [B, D]."""
    return F.normalize(self.image_projection(self.image_encoder(pixels)), dim=-1)

  def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token ids and mask [B, T] -> unit-norm embeddings [B, D]."""
    hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if self.metadata['text']['pooling'] == 'cls':
      pooled = hidden[:, 0]
    else:
      mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
      pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return F.normalize(self.text_projection(pooled), dim=-1)

  @contextlib.contextmanager
  def _inferring(self):
    """Eval mode without gradients for the NumPy methods, even on a model being fine-tuned:
    in training mode BatchNorm would normalise by each batch and update its statistics."""
    modes = [(module, module.training) for module in self.modules()]
    self.eval()
    try:
      with torch.no_grad():
        yield
    finally:
      for module, training in modes:  # each as it was (a fine-tune may freeze some in eval)
        module.training = training

  def _embed_pixels(self, pixels: list) -> np.ndarray:
    with self._inferring():
      return self.encode_image(torch.stack(pixels)).numpy()

  def encode_texts(self, texts) -> np.ndarray:
    """Unit text embeddings [N, D] ([D] for one text), as NumPy."""
    texts, single = inference.as_list(texts)
    out = [np.zeros((0, self.embed_dim), np.float32)]
    size = self.batch_size
    with self._inferring():
      for start in range(0, len(texts), size):
        out.append(self.encode_text(**self.tokenize(texts[start : start + size])).numpy())
    emb = np.concatenate(out)
    return emb[0] if single else emb

  def forward(self, pixels, input_ids, attention_mask):
    """(image embeddings, text embeddings, logit scale exp'd), as in CLIP."""
    return (
      self.encode_image(pixels),
      self.encode_text(input_ids, attention_mask),
      self.logit_scale.exp(),
    )
