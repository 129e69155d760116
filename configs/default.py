"""Defaults shared by every config; a config file overrides what differs.

Not a runnable config by itself: see demo.py and medpix.py.
"""

import math

import ml_collections

from medclip_jax.data import pipeline
from medclip_jax.data.tokenizer import BUNDLED_MINILM
from medclip_jax.objectives import attmim
from medclip_jax.objectives import entmlm
from medclip_jax.training.optimizer import DEFAULT_PARAM_GROUPS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Device mesh: the batch is split over both axes; with fsdp > 1, parameters
  # and optimizer state of at least fsdp_min_size elements are split over
  # 'fsdp' too. -1 takes all remaining devices.
  config.mesh = {'data': -1, 'fsdp': 1}
  config.fsdp_min_size = 2**16
  # Start from a trained model: a training workdir or an export directory. Its
  # weights (not its optimizer state or step) initialise the run, in place of
  # config.model.*.init's; the model's sizes must match. python -m
  # medclip_jax.compare sets it.
  config.init_from = ''

  config.data = ml_collections.ConfigDict()
  config.data.dir = ''
  # A dataset built by medclip_jax.data.tfds_builders instead of prepared
  # shards, e.g. 'medclip_manifest/ct' (needs tensorflow-datasets); then
  # config.data.dir is its TFDS data_dir ('' for TFDS's default).
  config.data.tfds_name = ''
  config.data.prepare_command = ''  # shown when config.data.dir has no data
  config.data.train_split = 'train'
  config.data.image_size = 224
  config.data.mean = IMAGENET_MEAN
  config.data.std = IMAGENET_STD
  config.data.crop_scale = (0.8, 1.0)  # area range of the random square crop
  # A left-right flip turns a left-sided finding into a right-sided one, so
  # flips are off by default. With hflip_prob > 0, captions that name a side
  # (left/right, leftward, Lt/Rt, LUL/RUL, LLL/RLL, dextro-/levo-) are either
  # flipped with the side swapped ('swap') or never flipped ('skip'); those
  # naming a side with no mirror image (RML, lingula) are never flipped.
  config.data.hflip_prob = 0.0
  config.data.laterality = 'swap'
  # What training pairs each image with: 'caption', or a template filled from
  # the record's labels, e.g. '{modality} of the {body_part}.' (records
  # lacking a label it names keep their caption). Evaluation uses captions.
  config.data.train_text = 'caption'
  # Unpaired data (MMCLIP): shares of the training stream taken by image-only
  # and text-only records of the training split (prepare's --unpaired, or
  # --unpaired_images / --unpaired_texts for the synthetic format); the rest is
  # paired. An image-only record is paired with `prompt` filled from its labels
  # (a label it lacks is left out) and trains every objective; a text-only one
  # trains EntMLM alone, its cross-attention to the image off (its blank image
  # still passes through the image tower's BatchNorm in training).
  config.data.unpaired = ml_collections.ConfigDict(pipeline.UNPAIRED_DEFAULTS)
  config.data.tokenizer = BUNDLED_MINILM  # or a Hugging Face model directory
  config.data.max_text_length = 64
  config.data.num_threads = 2  # reader threads per process
  # Batches decoded ahead per process (shared among its workers): memory, not speed,
  # past a few; 64 local batches of 256 at 224 px hold about 2.4 GB of images.
  config.data.prefetch = 64
  # Grain worker processes decoding and tokenizing beside the training process:
  # 0 (reader threads in-process only), a number, or -1 (auto: one per core but
  # one, at most 16, where the process has more than 2 cores, else 0). A resumed
  # run may use another number.
  config.data.workers = -1

  # What training minimises: objective name (a module in
  # medclip_jax/objectives/) -> weight; weight 0 switches it off. 'infonce'
  # (CLIP: softmax over the global batch), 'sigmoid' (SigLIP: independent
  # match/no-match per pair, texts passed round a device ring).
  # 'attmim' and 'entmlm' are MMCLIP's masked modelling objectives (settings
  # below), added to a contrastive one.
  config.objectives = {'infonce': 1.0, 'sigmoid': 0.0, 'attmim': 0.0, 'entmlm': 0.0}
  # AttMIM: the caption's words attend over the image tower's last feature grid
  # (image_size / 32 a side; image_size must be a multiple of 32); the top
  # mask_ratio of cells are blanked in the image (noise > 0 varies the choice
  # around them: 1 lets any cell displace the most attended one), and a decoder
  # of `depth` cross-attention layers, `width` wide, rebuilds those patches
  # (normalize_target: each target patch standardised, as MAE). temperature is
  # the word-to-cell softmax's (MGCA's 0.1).
  config.attmim = ml_collections.ConfigDict(attmim.DEFAULTS)
  # EntMLM: every token of every entity in `lexicon` (a file of one entity a
  # line; '' is the bundled default, medclip_jax/data/entity_lexicon.txt) is
  # masked in the training caption, topped up with random whole words to
  # `ratio` of its tokens; a decoder with cross-attention to the image's grid
  # predicts them. At most max_predictions x batch x text length masked tokens
  # are scored a step (the vocabulary-sized head is the costly part).
  config.entmlm = ml_collections.ConfigDict(entmlm.DEFAULTS)

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 512
  # Compute dtype of both towers: 'float32', 'bfloat16' or 'float16'. Parameters,
  # optimizer state, BatchNorm statistics, the heads, logit scale and loss stay
  # float32.
  config.model.dtype = 'float32'
  config.model.logit_scale_init = math.log(1 / 0.07)  # CLIP's; SigLIP uses log(10)
  # Start of the logit bias the 'sigmoid' objective learns (unused otherwise).
  config.model.logit_bias_init = -10.0
  config.model.image = ml_collections.ConfigDict()
  config.model.image.depth = 50
  config.model.image.width = 64
  config.model.image.bn_momentum = 0.9
  # '' (random) or 'torchvision:/path/resnet50.pth' (or .safetensors).
  config.model.image.init = ''
  # Convolution and max-pool implementation: 'cpu' (gradients written for
  # XLA's CPU backend, model/cpu_ops.py), 'xla' (XLA's own), or 'auto' (cpu on
  # a CPU backend). Same parameters and results either way.
  config.model.image.ops = 'auto'
  config.model.image.dtype = ''  # this tower's compute dtype; '' follows config.model.dtype
  # Rematerialisation: 'none', 'full' (each stage recomputed in the backward
  # pass from its input) or 'dots' (convolution outputs kept, the rest
  # recomputed): less activation memory for more compute, same results.
  config.model.image.remat = 'none'
  config.model.text = ml_collections.ConfigDict()
  # '' (random) or 'hf:/path/to/bert_dir' (config.json + model.safetensors or
  # pytorch_model.bin; BertModel or any BertFor*). With a checkpoint, the sizes
  # below (not dropout_rate) and config.data.tokenizer are taken from that
  # directory, whose tokenizer files it needs.
  config.model.text.init = ''
  config.model.text.vocab_size = 30522
  config.model.text.hidden_size = 768
  config.model.text.num_layers = 12
  config.model.text.num_heads = 12
  config.model.text.intermediate_size = 3072
  config.model.text.max_position_embeddings = 512
  config.model.text.type_vocab_size = 2
  config.model.text.layer_norm_eps = 1e-12
  config.model.text.dropout_rate = 0.1
  config.model.text.pooling = 'cls'  # or 'mean' over unmasked tokens
  config.model.text.dtype = ''  # this tower's compute dtype; '' follows config.model.dtype
  # 'none', 'full' (each layer recomputed in the backward pass) or 'dots'
  # (projection and feed-forward outputs kept, attention recomputed).
  config.model.text.remat = 'none'

  config.train = ml_collections.ConfigDict()
  config.train.steps = 10_000
  config.train.batch_size = 256  # global, across all devices and hosts
  config.train.learning_rate = 5e-4
  config.train.end_learning_rate_factor = 0.0
  config.train.warmup_steps = 500
  config.train.weight_decay = 0.1
  config.train.adam_b1 = 0.9
  config.train.adam_b2 = 0.98
  config.train.adam_eps = 1e-6
  config.train.grad_clip_norm = 1.0
  # A step whose loss or gradients are not finite is skipped (nothing learned,
  # counted in metrics.jsonl as skipped_steps); this many in a row stop the run.
  config.train.max_nonfinite_in_a_row = 10
  # Parameter groups: name -> regular expression matched in full against each
  # parameter's '/'-joined path (e.g. 'text_encoder/encoder/layer/0/output/dense/kernel');
  # every parameter must match exactly one group.
  config.train.param_groups = dict(DEFAULT_PARAM_GROUPS)
  # Learning-rate multiplier per parameter group (default 1); 0 freezes the group, which
  # then has no optimizer state, so a resumed run cannot freeze or unfreeze one.
  config.train.lr_multipliers = {
    'image_encoder': 1.0,
    'text_encoder': 1.0,
    'heads': 1.0,
    'decoders': 1.0,
  }
  # With the text tower locked (lr multiplier 0), compute its features of every
  # training text once and project them each step instead of running it (as
  # LiT does); only where nothing changes a record's text (one caption each, no
  # caption-rewriting flips). The start-up line says whether it applies.
  config.train.cache_locked_text = False
  # Gradient caching: embed each device's rows in this many chunks without
  # gradients, take the loss over the whole batch, then backpropagate chunk by
  # chunk (training/grad_cache.py): the plain step's gradients with one chunk's
  # activations in memory. Must divide the per-device batch; 0 or 1 is off.
  # BatchNorm in a trained image tower then normalises per chunk.
  config.train.grad_cache_chunks = 0
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3

  # When and on what the evaluators run.
  config.eval = ml_collections.ConfigDict()
  config.eval.every = 0  # 0: only at the end of training
  # The evaluation at the end of training (and python -m medclip_jax.evaluate's
  # default) is on `split`; those every `every` steps are on `every_split`, so
  # that choosing when to stop does not look at the test split.
  config.eval.split = 'test'
  config.eval.every_split = 'val'
  config.eval.batch_size = 256
  # Batches used to recompute BatchNorm statistics before evaluating (0: use
  # the running averages as they are; a locked image tower keeps its own).
  config.eval.bn_recompute_batches = 20
  # Write eval/step_<N>/report.html (tables, charts, example retrievals) after
  # the final evaluation; python -m medclip_jax.evaluate writes one too.
  config.eval.report = True
  # Which evaluators run: name -> {'type': a module in medclip_jax/evaluation/
  # (or 'off'), its options}; results are reported as '<name>.<key>'. Each
  # module's docstring lists its options and keys.
  config.evals = ml_collections.ConfigDict()
  # Recall@K and mean/median rank both ways, over every record of the split or
  # gallery_size of them drawn with seed.
  config.evals.retrieval = {'type': 'retrieval', 'ks': (1, 5, 10), 'gallery_size': 0, 'seed': 0}
  # Zero-shot classification: templates maps label field -> prompt templates.
  # A class's embedding averages every template filled with each of its
  # phrases: class_names[field][label] (a tuple of synonyms), or the label.
  # auroc: field -> (positive, negative) prompt, e.g. ('{}', 'no {}'), scored
  # per class with a bootstrap 95% interval (bootstrap resamples, seed).
  config.evals.zeroshot = {
    'type': 'zeroshot',
    'templates': {},
    'class_names': {},
    'auroc': {},
    'bootstrap': 1000,
    'seed': 0,
  }
  # Caption by retrieval from a bank (a split, or a .txt/.csv file), scored
  # with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D beside random and oracle picks.
  config.evals.caption = {'type': 'caption', 'bank': 'train', 'top_k': 3, 'examples': 12, 'seed': 0}
  # Logistic regression on frozen image embeddings, per label field ('fields',
  # default all) and share of the training labels; C chosen on val_split.
  config.evals.linear_probe = {
    'type': 'linear_probe',
    'fields': (),
    'fractions': (0.01, 0.1, 1.0),
    'Cs': (0.01, 0.1, 1.0, 10.0, 100.0),
    'train_split': 'train',
    'val_split': 'val',
    'seed': 0,
  }
  # Fine-tuning the image tower with a linear head per label field and share of
  # the labels (steps each): costly, so off; --config.evals.finetune.type=finetune.
  config.evals.finetune = {
    'type': 'off',
    'fields': (),
    'fractions': (0.01, 0.1, 1.0),
    'steps': 100,
    'batch_size': 32,
    'learning_rate': 1e-3,
    'tower_learning_rate': 1e-4,
    'train_split': 'train',
    'seed': 0,
  }
  # python -m medclip_jax.compare: steps of each of its two fine-tuning runs,
  # and the label text of the second ('' joins every label field).
  config.compare = {'steps': 200, 'label_text': ''}
  return config
