"""Zero-shot classification: each image takes the class whose prompt ensemble is nearest.

`config.evals.<name> = {'type': 'zeroshot', 'templates': {field: (template,
...)}, 'class_names': {field: {label: (phrase, ...)}}}` gives the keys
`<name>.<field>.top1` and `.top3` (top-k only where there are k classes)
for every templated field the dataset labels.
"""

import itertools
import string

import numpy as np


def zeroshot_metrics(
  image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, ks=(1, 3)
) -> dict:
  """Top-k accuracy of classifying images by their nearest class embedding, as {'top<k>': acc}.

  Images whose label is unknown (-1) are left out.
  """
  known = labels >= 0
  scores = image_emb[known] @ class_emb.T
  order = np.argsort(-scores, axis=1)
  hits = order == labels[known][:, None]
  return {f'top{k}': float(hits[:, :k].any(axis=1).mean()) for k in ks if k <= class_emb.shape[0]}


def prompts(field: str, label: str, templates, vocabs: dict, class_names: dict) -> list[str]:
  """The prompt ensemble of one class.

  Each template is filled with each phrase of the class (at `{}` or
  `{<field>}`); a template naming other label fields, like
  '{} of the {body_part}.', is filled with every phrase of every class of
  those fields, so the class embedding averages over them. The phrases of a
  class are `class_names[field][label]` if given, else the label itself.
  """

  def phrases(f, name):
    return tuple(dict(class_names.get(f, {})).get(name, (name,)))

  out = []
  for template in templates:
    others = sorted(
      {name for _, name, _, _ in string.Formatter().parse(template) if name and name != field}
    )
    choices = [[p for other in vocabs[f] for p in phrases(f, other)] for f in others]
    for phrase in phrases(field, label):
      for combo in itertools.product(*choices):
        out.append(template.format(phrase, **{field: phrase}, **dict(zip(others, combo))))
  return out


class Evaluator:
  """Prompt-ensemble zero-shot top-k for each templated label field of the split."""

  def __init__(self, templates=None, class_names=None):
    self.templates = {f: list(t) for f, t in dict(templates or {}).items()}
    self.class_names = dict(class_names or {})

  def class_embeddings(self, variables, embedder, field: str, vocabs: dict) -> np.ndarray:
    """One unit vector per class of `field`: the normalised mean of its prompt ensemble."""
    groups = [
      prompts(field, label, self.templates[field], vocabs, self.class_names)
      for label in vocabs[field]
    ]
    emb = embedder.encode_strings(variables, [p for g in groups for p in g])
    bounds = np.cumsum([0] + [len(g) for g in groups])
    emb = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)

  def __call__(self, variables, split, embedder) -> dict:
    results = {}
    for field in self.templates:
      if field not in split.vocabs:
        continue
      class_emb = self.class_embeddings(variables, embedder, field, split.vocabs)
      metrics = zeroshot_metrics(split.image, split.labels[field], class_emb)
      results.update({f'{field}.{k}': v for k, v in metrics.items()})
    return results
