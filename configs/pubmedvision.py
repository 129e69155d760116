"""PubMedVision: ResNet50 + BERT-base medical CLIP at 224 px on a 4,096-record sample.

PubMedVision (Hugging Face FreedomIntelligence/PubMedVision: the JSON and its
images_*.zip unzipped into images/ next to it) must be downloaded by hand;
prepare a seeded sample of it once, then train:

  python -m medclip_jax.data.prepare --format=pubmedvision --input=/path/to/PubMedVision/PubMedVision_Alignment_VQA.json --sample=4096 --output=data/pubmedvision
  python -m medclip_jax.main --config=configs/pubmedvision.py --workdir=runs/pubmedvision

Each record pairs its first image with the GPT-4V answer and keeps the
modality and body_part labels, which the zero-shot evaluation classifies.
2,000 steps of 128 pairs are about 70 passes over the ~3,500 training pairs
of the sample. Expected results are not yet measured in this project.
"""

from configs import medpix


def get_config():
  config = medpix.get_config()
  config.data.dir = 'data/pubmedvision'
  config.data.prepare_command = (
    'python -m medclip_jax.data.prepare --format=pubmedvision '
    '--input=/path/to/PubMedVision/PubMedVision_Alignment_VQA.json --sample=4096 '
    '--output=data/pubmedvision'
  )

  # A 4,096-pair sample: smaller batches and fewer steps than MedPix.
  config.train.steps = 2000
  config.train.batch_size = 128
  config.train.warmup_steps = 200
  config.train.checkpoint_every = 500
  config.eval.every = 500
  config.eval.batch_size = 128
  # The second template of each field averages over every class of the other.
  config.evals.zeroshot.templates = {
    'modality': ('a {} image.', 'a {} image of the {body_part}.'),
    'body_part': ('an image of the {}.', 'a {modality} image of the {}.'),
  }
  return config
