"""Config checks that need no devices and no compile, run before a trainer writes anything.

Each failure is a `UserError` of one line naming the field and the fix. The
checks that need the devices (the mesh, the batch split over it) and the
tokenizer follow in `Setup.create`; unknown config keys are refused by
ml_collections when the flags are parsed.
"""

import difflib
import json
import warnings
from pathlib import Path

import jax

from medclip_jax import model as model_lib
from medclip_jax import objectives as objectives_lib
from medclip_jax.data import pipeline
from medclip_jax.data import records
from medclip_jax.data import tokenizer
from medclip_jax.data import entities
from medclip_jax.errors import UserError
from medclip_jax.interop import convert, tables
from medclip_jax.model import bert
from medclip_jax.model import resnet
from medclip_jax.training import optimizer

IMAGE_STRIDE = resnet.STRIDE


def check_files(config) -> None:
  """Raises `UserError` if a file or directory the config starts from is missing (run
  before the pretrained text tower's sizes are read from its directory)."""
  for field, path, wanted in (
    (
      'model.image.init',
      convert.image_init_path(config),
      'a torchvision ResNet state dict (.pth or .safetensors)',
    ),
    (
      'model.text.init',
      convert.text_init_dir(config),
      'a Hugging Face BERT directory (config.json and weights)',
    ),
  ):
    if path is not None and not path.exists():
      spec = config.model.image.init if field == 'model.image.init' else config.model.text.init
      raise UserError(
        f"config.{field}={spec!r}: nothing at {path}; give the path of {wanted}, or '' for "
        'a randomly initialised tower.'
      )
  init_from = config.get('init_from', '')  # configs saved before it existed have none
  if init_from:
    path = Path(init_from)
    if not ((path / tables.EXPORT_FILES['metadata']).is_file() or (path / 'checkpoints').is_dir()):
      raise UserError(
        f'config.init_from={init_from!r} is neither a training workdir (with checkpoints/) '
        f'nor an export directory (with {tables.EXPORT_FILES["metadata"]}); give one, or '
        "'' to start from the towers' own initialisation."
      )


def check(config) -> None:
  """Raises `UserError` for the first setting the towers cannot take."""
  pipeline.worker_count(config.data.workers)  # a worker count that is not one
  size = config.data.image_size
  if size < IMAGE_STRIDE:
    raise UserError(
      f'config.data.image_size={size} is smaller than the ResNet image tower can take: it '
      f'halves the image five times, so give at least {IMAGE_STRIDE} (a multiple of '
      f'{IMAGE_STRIDE}, e.g. 64 or 224, keeps every feature map whole).'
    )
  if size % IMAGE_STRIDE:
    warnings.warn(
      f'config.data.image_size={size} is not a multiple of {IMAGE_STRIDE}: the last '
      'feature maps are padded at their edges.',
      stacklevel=2,
    )
  _check_optimizer(config.train)
  _check_data_reading(config.data)
  low, high = (float(x) for x in config.data.crop_scale)
  if not 0 < low <= high <= 1:
    raise UserError(
      f'config.data.crop_scale={tuple(config.data.crop_scale)} must be (low, high) with '
      '0 < low <= high <= 1: the share of the image area a random training crop keeps '
      '(e.g. (0.8, 1.0)).'
    )
  positions = config.model.text.max_position_embeddings
  if config.data.max_text_length > positions:
    raise UserError(
      f'config.data.max_text_length={config.data.max_text_length} is longer than the text '
      f'tower has positions (config.model.text.max_position_embeddings={positions}): set '
      f'config.data.max_text_length to {positions} or less.'
    )
  if config.train.max_nonfinite_in_a_row < 1:
    raise UserError(
      'config.train.max_nonfinite_in_a_row must be at least 1 (the number of skipped '
      f'non-finite steps in a row that stop the run), got {config.train.max_nonfinite_in_a_row}.'
    )
  for field, meaning, advice in (
    (
      'log_every',
      'steps between logged rows',
      'one above config.train.steps logs the last step only',
    ),
    (
      'checkpoint_every',
      'steps between checkpoints',
      'one above config.train.steps saves the last step only',
    ),
    ('keep_checkpoints', 'newest checkpoints kept', 'none would delete the trained model too'),
  ):
    if config.train[field] < 1:
      raise UserError(
        f'config.train.{field} must be at least 1 (the {meaning}), got {config.train[field]}: '
        f'{advice}.'
      )
  if config.eval.every < 0:
    raise UserError(
      'config.eval.every must be 0 (evaluate at the end of training only) or the steps '
      f'between evaluations, got {config.eval.every}.'
    )
  _check_precision_and_remat(config.model)
  ops = config.model.image.get('ops', 'auto')
  if ops not in ('auto', 'cpu', 'xla'):
    raise UserError(
      f"config.model.image.ops={ops!r}: give 'auto' (the CPU's on a CPU, else XLA's), 'cpu' "
      "(gradients written for XLA's CPU backend) or 'xla' (XLA's own convolutions)."
    )
  _check_sizes(config)
  _check_masked_modelling(config)
  steps, warmup = config.train.steps, config.train.warmup_steps
  if warmup < 0:
    raise UserError(
      f'config.train.warmup_steps={warmup} is negative: give the steps over which the learning '
      f'rate rises from 0 to config.train.learning_rate, 0 or more (e.g. {steps // 10}, a '
      'tenth of the run).'
    )
  if warmup > steps:
    raise UserError(
      f'config.train.warmup_steps={warmup} does not fit the run (config.train.steps={steps}): '
      'the learning rate rises from 0 over that many steps to config.train.learning_rate, '
      'which it would never reach. Set '
      f'--config.train.warmup_steps={steps // 10} (a tenth of the run is usual) or more steps.'
    )


def _check_optimizer(train) -> None:
  """Settings that would make the optimizer climb the loss, or stop it learning."""
  climbs = 'which would climb the loss instead of descending it'
  if not train.learning_rate >= 0:
    raise UserError(
      f'config.train.learning_rate={train.learning_rate} is negative, {climbs}: give a '
      'positive rate (e.g. 5e-4).'
    )
  if not train.end_learning_rate_factor >= 0:
    raise UserError(
      f'config.train.end_learning_rate_factor={train.end_learning_rate_factor} is negative: the '
      f'cosine decay would end at a negative rate, {climbs}. Give 0 (decay to 0) to 1.'
    )
  negative = {g: m for g, m in dict(train.lr_multipliers).items() if not float(m) >= 0}
  if negative:
    raise UserError(
      f'config.train.lr_multipliers {negative} are negative, {climbs} for those parameters: '
      'give 0 (frozen) or more.'
    )
  if not train.grad_clip_norm > 0:
    raise UserError(
      f'config.train.grad_clip_norm={train.grad_clip_norm}: gradients are scaled to at most '
      'this global norm, so 0 would stop all learning and a negative norm reverse it. Give a '
      'positive norm (1.0 is usual; a very large one, e.g. 1e9, does not clip).'
    )
  if not train.weight_decay >= 0:
    raise UserError(
      f'config.train.weight_decay={train.weight_decay} is negative, which would grow the '
      'weights instead of shrinking them: give 0 (none) or more (0.1 is usual).'
    )
  for name in ('adam_b1', 'adam_b2'):
    if not 0 <= train[name] < 1:
      raise UserError(
        f"config.train.{name}={train[name]} must be in [0, 1): the decay of Adam's moving "
        'average (0.9 and 0.98 are usual).'
      )
  if not train.adam_eps > 0:
    raise UserError(
      f"config.train.adam_eps={train.adam_eps} must be positive: it keeps Adam's update "
      'finite where a gradient is 0 (1e-6 is usual).'
    )


def check_grad_cache(config, devices: int) -> None:
  """Raises `UserError` unless `config.train.grad_cache_chunks` divides the rows of each
  of the `devices` devices (run by `Setup.create` once the batch split is checked)."""
  chunks, batch = config.train.grad_cache_chunks, config.train.batch_size
  per_device = batch // devices
  if chunks < 0 or (chunks > 1 and per_device % chunks):
    # The next divisor up keeps the chunks about as small as asked.
    fit = next((k for k in range(max(chunks, 1), per_device) if per_device % k == 0), per_device)
    raise UserError(
      f'config.train.grad_cache_chunks={chunks} does not divide the per-device batch of '
      f'{per_device} rows (config.train.batch_size={batch} over {devices} device(s)): '
      "each chunk takes an equal share of every device's rows. Set it to a divisor of "
      f'{per_device}, e.g. {fit}, or to 0 to compute the gradient over the whole batch at once.'
    )


def _active(config, name: str) -> bool:
  return float(config.objectives.get(name, 0.0)) != 0.0


def _check_masked_modelling(config) -> None:
  """MMCLIP's objectives' settings (config.attmim, config.entmlm), when they are on."""
  fail = lambda field, problem: UserError(f'config.{field}: {problem}')
  if _active(config, 'attmim'):
    settings, size = config.attmim, config.data.image_size
    if size % IMAGE_STRIDE:
      raise fail(
        'data.image_size',
        f"AttMIM masks whole cells of the image tower's grid, one per {IMAGE_STRIDE} pixels a "
        f'side, so the image size must be a multiple of {IMAGE_STRIDE}; {size} is not (e.g. '
        f'{size // IMAGE_STRIDE * IMAGE_STRIDE or IMAGE_STRIDE} is).',
      )
    if not 0.0 < settings.mask_ratio <= 1.0:
      raise fail(
        'attmim.mask_ratio',
        f'the share of cells masked must lie in (0, 1], got {settings.mask_ratio}.',
      )
    if settings.noise < 0 or settings.temperature <= 0:
      raise fail(
        'attmim',
        f'noise must be at least 0 and temperature above 0 (got noise={settings.noise}, '
        f'temperature={settings.temperature}).',
      )
  if _active(config, 'entmlm'):
    settings = config.entmlm
    if not 0.0 <= settings.ratio <= 1.0:
      raise fail(
        'entmlm.ratio', f'the share of tokens masked must lie in [0, 1], got {settings.ratio}.'
      )
    if not 0.0 < settings.max_predictions <= 1.0:
      raise fail(
        'entmlm.max_predictions',
        "the share of a batch's token positions scored must lie in (0, 1], got "
        f'{settings.max_predictions}.',
      )
    entities.load_lexicon(settings.lexicon or None)  # a UserError naming the file
  unpaired = config.data.get('unpaired')  # configs saved before it existed have none
  for kind in pipeline.KINDS[1:] if unpaired else ():
    if not 0.0 <= float(unpaired[kind]) < 1.0:
      raise fail(
        f'data.unpaired.{kind}',
        f'{unpaired[kind]} is not a share of the training stream: give a number in [0, 1) '
        '(0 mixes none in).',
      )
  shares = pipeline.unpaired_shares(config.data)
  if sum(shares.values()) >= 1.0:
    raise fail(
      'data.unpaired',
      f'the shares {shares} leave no room for paired records; keep their sum below 1.',
    )
  if shares and config.data.tfds_name:
    raise fail(
      'data.unpaired',
      'unpaired records are read from prepared shards (prepare --unpaired), not from a TFDS '
      'build: unset config.data.tfds_name or set the shares to 0.',
    )
  if 'text_only' in shares and _active(config, 'sigmoid'):
    raise fail(
      'data.unpaired.text_only',
      'the sigmoid objective does not leave out text-only rows yet; mix them in with '
      'infonce (--config.objectives.sigmoid=0 --config.objectives.infonce=1).',
    )
  if 'text_only' in shares and not _active(config, 'entmlm'):
    raise fail(
      'data.unpaired.text_only',
      'text-only records train EntMLM alone, which is off: switch it on '
      '(--config.objectives.entmlm=1) or set the share to 0.',
    )
  # Objectives that ask the model for more than the row-wise embeddings.
  on = [
    name
    for name, m in objectives_lib.modules().items()
    if hasattr(m, 'model_inputs') and _active(config, name)
  ]
  if on and config.train.grad_cache_chunks > 1:
    raise fail(
      'train.grad_cache_chunks',
      f'the objectives {on} read feature grids and token states, which gradient caching '
      'does not carry between its passes: set it to 0 (the plain gradient) to use them.',
    )


def _check_data_reading(data) -> None:
  """The input pipeline's settings, which grain and the tokenizer would otherwise refuse in a
  traceback after the workdir is written (or, for a flip probability, not at all)."""
  fail = lambda field, problem: UserError(f'config.data.{field}: {problem}')
  if data.laterality not in ('swap', 'skip'):
    raise fail(
      'laterality',
      f"{data.laterality!r} is not a way of flipping captions that name a side: give 'swap' "
      "(flip, swapping left and right in the caption) or 'skip' (never flip those images).",
    )
  if not 0.0 <= data.hflip_prob <= 1.0:
    raise fail('hflip_prob', f'{data.hflip_prob} is not a probability: give one in [0, 1].')
  for field, what in (('num_threads', 'reader threads'), ('prefetch', 'batches buffered')):
    if data[field] < 0:
      raise fail(field, f'the {what} per process must be 0 or more, got {data[field]}.')
  for field, length in (('crop_scale', 2), ('mean', 3), ('std', 3)):
    if len(tuple(data[field])) != length:
      raise UserError(
        f'config.data.{field}={tuple(data[field])} needs {length} numbers'
        + (' (low, high), e.g. 0.8,1.0' if field == 'crop_scale' else ', one per RGB channel')
        + '.'
      )
  if min(data.std) <= 0:
    raise UserError(f'config.data.std={tuple(data.std)}: each must be above 0.')
  if data.max_text_length < 3:
    raise fail(
      'max_text_length',
      f'{data.max_text_length} tokens leave no room for a caption beside [CLS] and [SEP]: '
      'give 3 or more (captions are usually given 64 to 128).',
    )


def _check_sizes(config) -> None:
  """The towers' and the decoders' sizes: what flax would otherwise refuse in a traceback."""
  fail = lambda field, problem: UserError(f'config.{field}: {problem}')
  model = config.model
  if model.embed_dim < 1:
    raise fail(
      'model.embed_dim', f'the shared embedding needs 1 or more dimensions, got {model.embed_dim}.'
    )
  if model.image.depth not in tables.RESNET_LAYOUTS:
    raise fail(
      'model.image.depth',
      f'{model.image.depth} is not a ResNet this image tower builds: give one of '
      f'{sorted(tables.RESNET_LAYOUTS)}.',
    )
  if model.text.pooling not in ('cls', 'mean'):
    raise fail(
      'model.text.pooling',
      f"{model.text.pooling!r} is not a pooling: give 'cls' (the [CLS] token's state) or "
      "'mean' (the mean over the caption's tokens).",
    )
  if model.image.width < 1:
    raise fail('model.image.width', f'the stem needs 1 or more channels, got {model.image.width}.')
  text = model.text
  # (field, width, heads, layers), each a (name, value) pair.
  towers = [
    (
      'model.text',
      ('hidden_size', text.hidden_size),
      ('num_heads', text.num_heads),
      ('num_layers', text.num_layers),
    )
  ]
  for name in ('attmim', 'entmlm'):
    if _active(config, name):
      settings = config[name]
      towers.append(
        (name, ('width', settings.width), ('heads', settings.heads), ('depth', settings.depth))
      )
  for field, (width_key, width), (heads_key, heads), (depth_key, depth) in towers:
    if min(width, heads, depth) < 1:
      raise fail(
        field,
        f'{width_key}={width}, {heads_key}={heads} and {depth_key}={depth} must each be 1 or more.',
      )
    if width % heads:
      raise fail(
        f'{field}.{heads_key}',
        f'{heads} attention heads do not divide {width_key}={width}: each head takes an equal '
        f'share of it; give a divisor of {width} (e.g. '
        f'{max(h for h in range(1, heads + 1) if width % h == 0)}).',
      )


def _check_precision_and_remat(model) -> None:
  dtypes = ', '.join(repr(name) for name in sorted(model_lib.DTYPES))
  if model.dtype not in model_lib.DTYPES:
    raise UserError(
      f'config.model.dtype={model.dtype!r} is not a compute dtype: give one of {dtypes} '
      '(parameters, optimizer state, the heads and the loss stay float32 whatever it is).'
    )
  for tower, unit, policies in (
    ('image', 'ResNet stage', resnet.REMAT_POLICIES),
    ('text', 'BERT layer', bert.REMAT_POLICIES),
  ):
    dtype, remat = model[tower].dtype, model[tower].remat
    if dtype and dtype not in model_lib.DTYPES:
      raise UserError(
        f'config.model.{tower}.dtype={dtype!r} is not a compute dtype: give one of {dtypes}, '
        f"or '' to follow config.model.dtype ({model.dtype!r})."
      )
    if remat != 'none' and remat not in policies:
      raise UserError(
        f'config.model.{tower}.remat={remat!r} is not a rematerialisation policy: give '
        f"'none' (keep every activation for the backward pass), 'full' (recompute each {unit} "
        "from its input) or 'dots' (keep its matmul and convolution outputs, recompute the rest)."
      )


# What a resumed run may not change: the model (its sizes, pooling, tokenizer via
# data) and the data it learns from (dataset, image size,
# text length, augmentation, training text), the objectives and their settings,
# and the parameter groups the optimizer state is laid out by. Everything else (steps, schedule,
# logging, checkpointing, evaluation, mesh, reader threads, the convolution
# implementation, compute dtypes and rematerialisation) may change.
_FIXED_ON_RESUME = (
  'model.',
  'data.',
  'objectives.',
  'train.param_groups.',
  # Objectives' own settings (config.attmim, ...).
  *(f'{name}.' for name in objectives_lib.settings_defaults()),
)
_FREE_KEYS = (
  # Where the data and the pretrained towers are found: a job may stage the same dataset
  # elsewhere (a node's local disk), and a resume reads no tower init. The change is listed.
  'data.dir',
  'model.image.init',
  'model.text.init',
  'data.prepare_command',
  'data.num_threads',
  'data.prefetch',
  'data.workers',
  'model.image.ops',
  # Compute dtypes, remat and dropout change neither the parameters nor the optimizer state
  # (until 61ec91a a pretrained text tower's config.json set its dropout rate).
  'model.text.dropout_rate',
  'model.dtype',
  'model.image.dtype',
  'model.text.dtype',
  'model.image.remat',
  'model.text.remat',
)


_ABSENT = object()  # a key one of the two configs lacks
_MULTIPLIERS = 'train.lr_multipliers.'


def _flat(tree: dict, prefix: str = '') -> dict:
  """{'a.b.c': leaf} of nested dicts."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def check_resume(saved: dict, config, where: str, tokenizer_recorded: bool = False) -> str | None:
  """Compares `config` with the config `saved` with the checkpoint at `where`
  (WORKDIR/checkpoints/STEP). With `tokenizer_recorded` (the checkpoint holds its
  vocabulary's digest, which `check_same_data` compares), a pretrained text tower's
  tokenizer may move with its init directory.

  Raises `UserError` naming every changed key that would change the model or
  its data, with both values, or else every learning-rate multiplier that
  freezes or unfreezes a group of parameters. Returns one line listing the
  other changes (they are accepted), or None if nothing changed.
  """
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in old.keys() | new.keys() if _value(old, k) != _value(new, k))
  fixed = [
    k
    for k in changed
    if k.startswith(_FIXED_ON_RESUME)
    and k not in _FREE_KEYS
    # A pretrained text tower's tokenizer is its init directory: staged elsewhere, both move.
    and not (k == 'data.tokenizer' and tokenizer_recorded and _follows_text_init(old, new))
  ]
  free = [k for k in changed if k not in fixed]

  def listing(keys, sep):
    return sep.join(f'{k}: {_show(_value(old, k))} -> {_show(_value(new, k))}' for k in keys)

  if fixed:
    raise UserError(
      f'This config changes the model or its data since the checkpoint at {where} was '
      f'written ({listing(fixed, "; ")}, checkpoint value first). Resuming would go on training, '
      'and later export, a model its checkpoint does not describe. Use a fresh --workdir for '
      'the new settings, or drop these overrides to resume; steps, the learning-rate schedule, '
      'logging, checkpointing and evaluation may change on resume.'
    )
  frozen = lambda flat, k: float(_value(flat, k)) == 0.0
  switched = [k for k in free if k.startswith(_MULTIPLIERS) and frozen(old, k) != frozen(new, k)]
  held = _groups_with_parameters(config) if switched else set()
  switched = [k for k in switched if k.removeprefix(_MULTIPLIERS) in held]
  if switched:
    raise UserError(
      f'This config freezes or unfreezes parameter groups since the checkpoint at {where} was '
      f'written ({listing(switched, "; ")}, checkpoint value first). Freezing or unfreezing a '
      'parameter group (train.lr_multipliers.<group> to or from 0) changes the layout of the '
      'optimizer state, which holds nothing for a frozen group, so this run cannot resume from '
      'this checkpoint. To train on from its weights with the new multipliers, start a new run '
      f'in a fresh --workdir with --config.init_from={Path(where).parent.parent} (its steps, '
      'schedule and optimizer state start afresh), or drop these overrides to resume.'
    )
  if free:
    return f'resuming with settings changed since the checkpoint: {listing(free, ", ")}'
  return None


def check_same_data(saved: dict | None, current: dict, data_dir: str, where: str) -> None:
  """Raises `UserError` if the training data (`pipeline.training_data`) differs from what
  the checkpoint at `where` was trained on (`saved`; None for a checkpoint older than the
  record, which passes): its data position counts records in the old data's order, and its
  text tower was trained on the old vocabulary."""
  if saved is None or saved == current:
    return

  def describe(entry):
    if not entry or entry.get('count') is None:
      return 'absent'
    files = entry.get('files')
    shards = f' in {len(files)} shard(s)' if files is not None else ''
    return f'{entry["count"]} records, {entry.get("captions")} captions{shards}'

  def change(split):
    old, new = describe(saved['splits'].get(split)), describe(current['splits'].get(split))
    if old == new:
      return f'{split}: {old}, but other shard files'
    return f'{split}: {old} then, {new} now'

  splits = sorted(saved['splits'].keys() | current['splits'].keys())
  changes = [change(s) for s in splits if saved['splits'].get(s) != current['splits'].get(s)]
  if saved['max_side'] != current['max_side']:
    changes.append(f'images stored at max_side {saved["max_side"]} then, {current["max_side"]} now')
  if saved['vocabulary'] != current['vocabulary']:
    changes.append('another vocabulary in the tokenizer (config.data.tokenizer)')
  workdir = Path(where).parent.parent
  raise UserError(
    f'The training data in {data_dir} is not the data the checkpoint at {where} was trained '
    f"on ({'; '.join(changes)}). The checkpoint's data position counts records in the old "
    "data's order, so resuming would repeat some and skip others, and its text tower knows "
    "the old vocabulary. To resume, point --config.data.dir (and a pretrained text tower's "
    'config.model.text.init) at what it was trained on; to train this model on the new data, '
    f'start a new run in a fresh --workdir with --config.init_from={workdir} (its schedule '
    'and optimizer state start afresh).'
  )


def _follows_text_init(*flats: dict) -> bool:
  """Whether each config's tokenizer is its text tower's init directory."""
  for flat in flats:
    init = str(_value(flat, 'model.text.init') or '')
    if not init or init.partition(':')[2] != _value(flat, 'data.tokenizer'):
      return False
  return True


def _value(flat: dict, key: str):
  # A group without a multiplier trains at 1: configs saved before 'decoders' had one lack it.
  value = flat.get(key, 1.0 if key.startswith(_MULTIPLIERS) else _ABSENT)
  if key == 'data.tokenizer' and isinstance(value, str) and value:
    # Configs saved before the bundled tokenizer was kept by name hold its installed path.
    return str(tokenizer.resolve(value))
  return value


def _groups_with_parameters(config) -> set[str]:
  """The parameter groups of `config` that hold parameters (only those have optimizer state)."""
  from medclip_jax.training import setup  # pylint: disable=import-outside-toplevel (it imports us)

  params = setup.shapes(config).abstract_state.params
  return set(jax.tree.leaves(optimizer.param_labels(config.train, params)))


def _show(value) -> str:
  return '(absent)' if value is _ABSENT else repr(value)


# Subtrees whose keys are names a config chooses (evaluators, objectives, parameter groups).
_OPEN_FIELDS = ('evals.', 'objectives.', 'train.lr_multipliers.', 'train.param_groups.')


def check_fields(config, reference) -> None:
  """Raises `UserError` for a field of `config` (a config file's) that `reference` (the
  defaults every config builds on) lacks: a misspelt field would be ignored, its default
  used, and the misspelling saved with the checkpoints."""
  known = _flat(reference.to_dict())
  known_prefixes = {k.rsplit('.', 1)[0] + '.' for k in known if '.' in k}
  unknown = [
    key
    for key in _flat(config.to_dict())
    if key not in known and not key.startswith(_OPEN_FIELDS) and key + '.' not in known_prefixes
  ]
  if unknown:
    hints = []
    for key in unknown:
      near = difflib.get_close_matches(key, known, n=1)
      hints.append(f'config.{key}' + (f' (did you mean config.{near[0]}?)' if near else ''))
    raise UserError(
      f'The config sets {", ".join(hints)}, which configs/default.py does not define: a '
      'misspelt field would be ignored and its default used. Spell it as default.py does.'
    )


def data_warnings(config, info: dict) -> list[str]:
  """What training can run with but a user would want to know before it does."""
  records = info['splits'][config.data.train_split]['count']
  if config.train.batch_size <= records:
    return []
  return [
    f'the global batch (config.train.batch_size={config.train.batch_size}) is larger than the '
    f'{records} training records, so every batch holds some records twice and the contrastive '
    "loss counts each copy as the other's negative: give a batch of at most "
    f'{records}.'
  ]


def check_splits(config, info: dict) -> None:
  """Raises `UserError` if the training split, or a split the evaluations read, has no
  records: found before training rather than after it."""
  splits = info.get('splits', {})
  if not splits.get(config.data.train_split, {}).get('count'):
    raise UserError(
      f'config.data.train_split={config.data.train_split!r}: the dataset in '
      f'{config.data.tfds_name or config.data.dir} has no records in that split (splits with '
      f'records: {records.splits_with_records(info)}); set --config.data.train_split to one '
      'of them.'
    )
  if all(entry.get('type') == 'off' for entry in config.evals.values()):
    return
  for field in ('split', 'every_split') if config.eval.every else ('split',):
    name = config.eval[field]
    if not splits.get(name, {}).get('count'):
      raise UserError(
        f'config.eval.{field}={name!r}: the dataset in {config.data.dir} has no records in '
        f'that split (splits with records: {records.splits_with_records(info)}); set '
        f'--config.eval.{field} to one of them.'
      )
