"""Evaluation: image-text retrieval and zero-shot classification by prompts.

All metrics use the model in eval mode (BatchNorm running statistics, no
dropout), which is how an exported model is used. Because running averages
kept during training lag behind the weights, the trainer first recomputes the
image tower's BatchNorm statistics with the final weights
(`recompute_batch_stats`), as precise-BN does.
"""

import itertools
import json
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from medclip_jax import sharding
from medclip_jax.data import pipeline
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.models.clip import MedCLIP


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Recall@K of the paired item, image->text and text->image.

  Row i of each array is a pair; ties count against the model.
  """
  sim = image_emb.astype(np.float32) @ text_emb.astype(np.float32).T
  positive = np.diag(sim)
  rank_i2t = (sim > positive[:, None]).sum(axis=1)
  rank_t2i = (sim > positive[None, :]).sum(axis=0)
  out = {'retrieval.gallery_size': float(len(positive))}
  for name, rank in (('i2t', rank_i2t), ('t2i', rank_t2i)):
    for k in ks:
      out[f'retrieval.{name}.R@{k}'] = float(np.mean(rank < k))
  return out


def zeroshot_metrics(
  field: str, image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, ks=(1, 3)
) -> dict:
  """Top-k accuracy of classifying images by their nearest class prompt.

  Images whose label is unknown (-1) are left out.
  """
  known = labels >= 0
  scores = image_emb[known] @ class_emb.T
  order = np.argsort(-scores, axis=1)
  hits = order == labels[known][:, None]
  out = {}
  for k in ks:
    if k <= class_emb.shape[0]:
      out[f'zeroshot.{field}.top{k}'] = float(hits[:, :k].any(axis=1).mean())
  return out


class Evaluator:
  """Encodes a split and computes every metric; compiled functions are reused."""

  def __init__(self, model: MedCLIP, config, mesh, label_vocabs: dict):
    self.model = model
    self.config = config
    self.mesh = mesh
    self.label_vocabs = label_vocabs
    self.batch_size = config.eval.batch_size
    sharding.check_batch_size(self.batch_size, mesh, 'eval.batch_size')
    self._tokenizer = tokenizer_lib.load(config.data.tokenizer)
    replicated = sharding.replicated(mesh)
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def encode_images(variables, images):
      return model.apply(
        variables, pipeline.normalize(images, mean, std), train=False, method=MedCLIP.encode_image
      )

    def encode_texts(variables, input_ids, attention_mask):
      return model.apply(
        variables, input_ids, attention_mask, train=False, method=MedCLIP.encode_text
      )

    self._encode_images = jax.jit(encode_images, out_shardings=replicated)
    self._encode_texts = jax.jit(encode_texts, out_shardings=replicated)
    self._gather = jax.jit(lambda x: x, out_shardings=replicated)

  def _variables(self, state):
    return {'params': state.params, 'batch_stats': state.batch_stats}

  def _encode_prompts(self, variables, prompts: list[str]) -> np.ndarray:
    tokens = self._tokenizer(
      prompts,
      max_length=self.config.data.max_text_length,
      padding='max_length',
      truncation=True,
      return_tensors='np',
    )
    n = len(prompts)
    padded = -(-n // self.batch_size) * self.batch_size
    ids = np.zeros((padded, tokens['input_ids'].shape[1]), np.int32)
    mask = np.zeros_like(ids)
    ids[:n], mask[:n] = tokens['input_ids'], tokens['attention_mask']
    out = []
    for start in range(0, padded, self.batch_size):
      rows = slice(start, start + self.batch_size)
      # Every process holds all prompts, so each device takes its own rows.
      batch = sharding.from_host_copy(
        {'input_ids': ids[rows], 'attention_mask': mask[rows]}, self.mesh
      )
      out.append(
        np.asarray(self._encode_texts(variables, batch['input_ids'], batch['attention_mask']))
      )
    return np.concatenate(out)[:n]

  def _phrases(self, field: str, label: str) -> tuple[str, ...]:
    return tuple(dict(self.config.eval.class_names.get(field, {})).get(label, (label,)))

  def prompts(self, field: str, label: str, templates) -> list[str]:
    """The prompt ensemble of one class.

    Each template is filled with each phrase of the class (at `{}` or
    `{<field>}`); a template naming other label fields, like
    '{} of the {body_part}.', is filled with every phrase of every class of
    those fields, so the class embedding averages over them.
    """
    out = []
    for template in templates:
      others = sorted(
        {name for _, name, _, _ in string.Formatter().parse(template) if name and name != field}
      )
      choices = [
        [p for other in self.label_vocabs[f] for p in self._phrases(f, other)] for f in others
      ]
      for phrase in self._phrases(field, label):
        for combo in itertools.product(*choices):
          out.append(template.format(phrase, **{field: phrase}, **dict(zip(others, combo))))
    return out

  def class_embeddings(self, variables, field: str, templates) -> np.ndarray:
    """One unit vector per class: the normalised mean of its prompt ensemble.

    Phrases of a class are `config.eval.class_names[field][label]` if given,
    else the label itself.
    """
    groups = [self.prompts(field, label, templates) for label in self.label_vocabs[field]]
    emb = self._encode_prompts(variables, [p for g in groups for p in g])
    bounds = np.cumsum([0] + [len(g) for g in groups])
    emb = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)

  def encode_split(self, variables, split: str):
    """Image and text embeddings and labels of every record of `split`."""
    images, texts, labels = [], [], {f: [] for f in self.label_vocabs}
    for local in pipeline.eval_batches(
      self.config.data,
      split,
      global_batch_size=self.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      label_vocabs=self.label_vocabs,
    ):
      batch = sharding.to_global_batch(local, self.mesh)
      mask = np.asarray(self._gather(batch['mask'])).astype(bool)
      images.append(np.asarray(self._encode_images(variables, batch['image']))[mask])
      texts.append(
        np.asarray(self._encode_texts(variables, batch['input_ids'], batch['attention_mask']))[mask]
      )
      for field in labels:
        labels[field].append(np.asarray(self._gather(batch[f'label/{field}']))[mask])
    return (
      np.concatenate(images),
      np.concatenate(texts),
      {f: np.concatenate(v) for f, v in labels.items()},
    )

  def __call__(self, state) -> dict:
    variables = self._variables(state)
    image_emb, text_emb, labels = self.encode_split(variables, self.config.eval.split)
    results = retrieval_metrics(image_emb, text_emb, tuple(self.config.eval.retrieval_ks))
    for field, templates in self.config.eval.zeroshot.items():
      if field not in self.label_vocabs:
        continue
      class_emb = self.class_embeddings(variables, field, list(templates))
      results.update(zeroshot_metrics(field, image_emb, labels[field], class_emb))
    return results


def recompute_batch_stats(model: MedCLIP, params, batch_stats, batches, mesh, config):
  """BatchNorm statistics of the current weights, averaged over `batches`.

  Running averages mix statistics of many past weight values; after the last
  update they no longer describe the network being evaluated. Here every
  BatchNorm layer sees each batch with momentum 0 (so its 'running' statistic
  is exactly that batch's), and the results are averaged.
  """
  exact = model.clone(image_encoder=model.image_encoder.clone(bn_momentum=0.0))
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  @jax.jit
  def batch_statistics(params, batch_stats, images):
    _, updates = exact.apply(
      {'params': params, 'batch_stats': batch_stats},
      pipeline.normalize(images, mean, std),
      train=True,
      method=MedCLIP.encode_image,
      mutable=['batch_stats'],
    )
    return updates['batch_stats']

  total, count = None, 0
  for local in batches:
    stats = batch_statistics(params, batch_stats, sharding.to_global_batch(local['image'], mesh))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  if count == 0:
    return batch_stats
  return jax.tree.map(lambda x: x / count, total)


def write_results(workdir: str, step: int, results: dict) -> Path:
  path = Path(workdir) / 'eval' / f'step_{step}.json'
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + '\n')
  return path


def format_table(step: int, results: dict) -> str:
  """A two-column table of the results, for the end of a run."""
  width = max(len(k) for k in results)
  lines = [f'Evaluation at step {step}', '-' * (width + 12)]
  for key, value in results.items():
    text = f'{int(value)}' if key.endswith('gallery_size') else f'{value:.4f}'
    lines.append(f'{key:<{width}}  {text:>8}')
  return '\n'.join(lines)
