"""ROCO: ResNet50 + BERT-base medical CLIP at 224 px on radiology figure captions.

ROCO (or ROCOv2) must be downloaded by hand; prepare it once, then train:

  python -m medclip_jax.data.prepare --format=roco --input=/path/to/roco --output=data/roco
  python -m medclip_jax.main --config=configs/roco.py --workdir=runs/roco

ROCO's official train/validation/test splits are kept. Its records carry no
labels, so evaluation is image-text retrieval and caption by retrieval (this
config gives the zero-shot and linear-probe evaluators no label fields).
Expected results on real ROCO are not yet measured in this project.
"""

from configs import medpix


def get_config():
  config = medpix.get_config()
  config.data.dir = 'data/roco'
  config.data.prepare_command = (
    'python -m medclip_jax.data.prepare --format=roco --input=/path/to/roco --output=data/roco'
  )
  config.evals.zeroshot.templates = {}
  return config
