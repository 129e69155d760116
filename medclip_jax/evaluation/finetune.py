"""Fine-tuning: the image tower plus a linear head trained on 1%, 10% and 100% of the labels.

`config.evals.<name> = {'type': 'finetune', 'fields': (), 'fractions': (0.01, 0.1, 1.0),
'steps': 100, 'batch_size': 32, 'learning_rate': 1e-3, 'tower_learning_rate': 1e-4,
'train_split': 'train', 'seed': 0}`. For each label field and share of the
training labels (sampled as the linear probe samples them), a copy of the
trained image tower with a fresh linear head on its pooled features is trained
with AdamW and cross-entropy on eval-cropped images (BatchNorm in training
mode), then scored on the evaluated split: `<name>.<field>.<fraction>.{accuracy,
balanced_accuracy,auroc,train_examples}`, as MMCLIP reports fine-tuned
classification. The model being evaluated is not changed. It costs `steps`
training steps per field and fraction, so configs leave it off (type 'off'). A
field the linear probe cannot score (one training class, no labels) is skipped
with a logged warning.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import linen as nn

from medclip_jax.data import pipeline
from medclip_jax.evaluation.classification import balanced_accuracy
from medclip_jax.evaluation.classification import macro_auroc
from medclip_jax.evaluation import linear_probe
from medclip_jax.evaluation.linear_probe import fraction_label
from medclip_jax.evaluation.linear_probe import sample_labelled


class Classifier(nn.Module):
  """An image tower and a linear head on its pooled features."""

  image_encoder: nn.Module
  classes: int

  @nn.compact
  def __call__(self, images, train: bool):
    return nn.Dense(self.classes, name='head')(self.image_encoder(images, train=train))


class Evaluator:
  """Fine-tunes copies of the image tower per label field and share of the labels."""

  def __init__(
    self,
    fields=(),
    fractions=(0.01, 0.1, 1.0),
    steps=100,
    batch_size=32,
    learning_rate=1e-3,
    tower_learning_rate=1e-4,
    train_split='train',
    seed=0,
  ):
    self.fields = tuple(fields)
    self.fractions = tuple(float(f) for f in fractions)
    if not all(0 < f <= 1 for f in self.fractions):
      raise ValueError(f'fractions must lie in (0, 1], got {self.fractions}')
    self.steps, self.batch_size, self.seed = int(steps), int(batch_size), int(seed)
    self.learning_rate, self.tower_learning_rate = float(learning_rate), float(tower_learning_rate)
    self.train_split = train_split

  def _functions(self, embedder, classes: int):
    """(init, jitted train step, jitted logits) of a classifier with `classes` outputs."""
    data = embedder.config.data
    mean, std = tuple(data.mean), tuple(data.std)
    model = Classifier(embedder.model.image_encoder, classes)
    tx = optax.multi_transform(
      {'head': optax.adamw(self.learning_rate), 'tower': optax.adamw(self.tower_learning_rate)},
      lambda params: {k: 'head' if k == 'head' else 'tower' for k in params},
    )

    def init(variables, rng):
      size = data.image_size
      head = model.init(rng, jnp.zeros((1, size, size, 3)), train=False)['params']['head']
      # Copies: the step donates its buffers, and the evaluated model must stay as it is.
      tower = jax.tree.map(
        jnp.copy, (variables['params']['image_encoder'], variables['batch_stats'])
      )
      params = {'image_encoder': tower[0], 'head': head}
      return params, tower[1], tx.init(params)

    def step(params, batch_stats, opt_state, images, labels):
      def loss_fn(params):
        logits, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats},
          pipeline.normalize(images, mean, std),
          train=True,
          mutable=['batch_stats'],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates['batch_stats']

      (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), batch_stats, opt_state

    def logits(params, batch_stats, images):
      return model.apply(
        {'params': params, 'batch_stats': batch_stats},
        pipeline.normalize(images, mean, std),
        train=False,
      )

    return init, jax.jit(step, donate_argnums=(0, 1, 2)), jax.jit(logits)

  def _scores(self, logits_fn, params, batch_stats, embedder, split, labels) -> dict:
    rows = np.flatnonzero(labels >= 0)
    size = embedder.batch_size
    logits = np.concatenate(
      [
        np.asarray(logits_fn(params, batch_stats, embedder.pixels(split.name, rows[i : i + size])))
        for i in range(0, len(rows), size)
      ]
    )
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    predicted, y = probabilities.argmax(axis=1), labels[rows]
    return {
      'accuracy': float(np.mean(predicted == y)),
      'balanced_accuracy': balanced_accuracy(y, predicted),
      'auroc': macro_auroc(y, probabilities),
    }

  def unmatched(self, label_vocabs: dict) -> list[str]:
    return linear_probe.unmatched_fields(self.fields, label_vocabs)

  def check(self, embedder) -> None:
    linear_probe.training_split(embedder, self.train_split, 'fine-tuning')

  def __call__(self, variables, split, embedder) -> dict:
    fields = [f for f in (self.fields or split.vocabs) if f in split.vocabs]
    train = embedder.encode_split(variables, self.train_split, split.vocabs, texts=False)
    results, table = {}, {}
    for field in fields:
      train_labels = train.labels[field]
      reason = linear_probe.unscorable(field, train, split)
      if reason:  # one class would give a head that is always right
        logging.warning('fine-tuning: %r is not scored: %s', field, reason)
        continue
      classes = len(split.vocabs[field])
      init, step, logits = self._functions(embedder, classes)
      table[field] = {}
      for fraction in self.fractions:
        rows = sample_labelled(train_labels, fraction, self.seed)
        images, labels = embedder.pixels(self.train_split, rows), train_labels[rows]
        params, batch_stats, opt_state = init(variables, jax.random.PRNGKey(self.seed))
        rng = np.random.default_rng(self.seed)
        for _ in range(self.steps):
          batch = rng.integers(0, len(rows), self.batch_size)
          params, batch_stats, opt_state = step(
            params, batch_stats, opt_state, images[batch], labels[batch]
          )
        scores = self._scores(logits, params, batch_stats, embedder, split, split.labels[field])
        label = fraction_label(fraction)
        table[field][label] = {**scores, 'train_examples': len(rows)}
        for key, value in scores.items():
          if np.isfinite(value):
            results[f'{field}.{label}.{key}'] = value
        results[f'{field}.{label}.train_examples'] = float(len(rows))
    return {**results, 'details': {'table': table}}
