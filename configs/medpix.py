"""MedPix: ResNet50 + BERT-base medical CLIP at 224 px.

Prepare the MedPix export once, then train:

  python -m medclip_jax.data.prepare --format=medpix --input=/path/to/medpix/export.csv --output=data/medpix
  python -m medclip_jax.main --config=configs/medpix.py --workdir=runs/medpix

Without prepared data the run stops with a message saying where the data
should be and how to prepare it. Expected results on real MedPix are not yet
measured in this project; the seed projects report zero-shot modality
accuracy well above chance after a few epochs.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dir = 'data/medpix'
  config.data.prepare_command = (
    'python -m medclip_jax.data.prepare --format=medpix '
    '--input=/path/to/medpix/export.csv --output=data/medpix'
  )
  config.data.image_size = 224
  config.data.max_text_length = 128

  config.model.image.depth = 50
  config.model.text.pooling = 'cls'

  config.train.steps = 20_000
  config.train.batch_size = 256
  config.train.warmup_steps = 1000
  config.eval.every = 2000
  config.evals.zeroshot.templates = {
    'modality': ('a {} image.', '{} scan.'),
    'body_part': ('an image of the {}.', 'a scan of the {}.'),
  }
  return config
