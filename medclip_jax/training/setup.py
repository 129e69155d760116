"""The one place a config becomes a trainer; training, the benchmark, export and the tests ask it.

`Setup.create(config)` builds, in order: the device mesh; the model and its
objectives; the optimizer and learning-rate schedule; the abstract state
(shapes only, from `jax.eval_shape`) and its shardings; the jitted train step.
Its methods give the initial state (fresh, with pretrained towers if the
config names them, or restored from a checkpoint), this process's training
batches, the evaluation and the BatchNorm recomputation. `shapes(config)` is
the part that needs no devices (export, config checks); `evaluation(config,
...)` the evaluators of a trained model (the evaluation command).
"""

import dataclasses
import time

import jax
import numpy as np
import optax

from medclip_jax import model as model_lib
from medclip_jax import objectives as objectives_lib
from medclip_jax import sharding
from medclip_jax.data import entities
from medclip_jax.data import pipeline
from medclip_jax.data import tokenizer as tokenizer_lib
from medclip_jax.errors import UserError
from medclip_jax.evaluation import Evaluation
from medclip_jax.interop import convert
from medclip_jax.training import checkpointing
from medclip_jax.training import checks
from medclip_jax.training import optimizer as optimizer_lib
from medclip_jax.training import state as state_lib
from medclip_jax.training.precise_bn import PreciseBN
from medclip_jax.training.step import make_train_step


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What a config describes, before any device holds anything."""

  model: model_lib.MedCLIP
  objectives: dict  # objectives.build(config): {name: (weight, module)}
  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState  # ShapeDtypeStructs


def shapes(config) -> Shapes:
  """The model, objectives, optimizer and abstract train state of `config`; nothing is allocated."""
  model = model_lib.build(config.model)
  objectives = objectives_lib.build(config)
  rng = jax.random.PRNGKey(config.seed)
  abstract_params, _ = jax.eval_shape(
    lambda r: state_lib.initial_params(model, objectives, config, *jax.random.split(r)), rng
  )
  tx = optimizer_lib.create(config.train, abstract_params)
  abstract_state = jax.eval_shape(lambda r: state_lib.create(model, objectives, tx, config, r), rng)
  return Shapes(model, objectives, tx, abstract_state)


def evaluation(config, label_vocabs: dict) -> Evaluation:
  """The configured evaluators (`config.evals`) for a trained model, outside a training run:
  the model of `config.model` on a data-parallel mesh of every device."""
  mesh = sharding.create_mesh({'data': -1, 'fsdp': 1})
  return Evaluation(model_lib.build(config.model), config, mesh, label_vocabs)


def restore_on_one_device(config, checkpointer, step: int) -> state_lib.TrainState:
  """The train state of checkpoint `step`, whole on the first device (export, inspection)."""
  abstract = shapes(config).abstract_state
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = checkpointing.abstract_like(abstract, jax.tree.map(lambda _: device, abstract))
  return checkpointer.restore_state(step, target)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a training run is assembled from; see the module docstring."""

  config: object
  mesh: jax.sharding.Mesh
  model: model_lib.MedCLIP
  objectives: dict
  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState  # a NamedSharding per leaf
  local_batch_size: int  # this process's rows of each global batch
  # (state, global batch) -> (state, metrics); the state is donated.
  train_step: object

  @classmethod
  def create(cls, config) -> 'Setup':
    """Takes a pretrained text tower's sizes into `config` (in place), checks the config
    (`training.checks`, then the mesh, batch and tokenizer), then builds everything."""
    checks.check_files(config)
    convert.resolve_pretrained_config(config)
    checks.check(config)
    mesh = sharding.create_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
    checks.check_grad_cache(config, mesh.size)
    tokenizer = tokenizer_lib.load(config.data.tokenizer, config.model.text.init)
    if float(config.objectives.get('entmlm', 0.0)) and tokenizer.mask_token_id is None:
      raise UserError(
        f'config.objectives.entmlm: the tokenizer in {tokenizer_lib.resolve(config.data.tokenizer)} '
        'has no mask token ([MASK]) to hide entities with; use a BERT tokenizer, or switch '
        'EntMLM off (--config.objectives.entmlm=0).'
      )
    if len(tokenizer) > config.model.text.vocab_size and config.model.text.init:
      raise UserError(
        f'The tokenizer in {tokenizer_lib.resolve(config.data.tokenizer)} has '
        f'{len(tokenizer)} tokens but the checkpoint config.model.text.init names has '
        f"embeddings for {config.model.text.vocab_size} (its config.json's vocab_size): "
        'its added tokens have no embedding. Put the tokenizer the checkpoint was trained '
        'with beside it.'
      )
    if len(tokenizer) > config.model.text.vocab_size:
      raise UserError(
        f'The tokenizer in {tokenizer_lib.resolve(config.data.tokenizer)} has '
        f'{len(tokenizer)} tokens but config.model.text.vocab_size is '
        f'{config.model.text.vocab_size}: set config.model.text.vocab_size to {len(tokenizer)} '
        '(or more), or config.data.tokenizer to the tokenizer the text tower was built for.'
      )
    parts = shapes(config)
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    state_shardings = sharding.state_shardings(parts.abstract_state, mesh, config.fsdp_min_size)
    train_step = jax.jit(
      make_train_step(parts.model, parts.objectives, parts.tx, schedule, mesh, config),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
      compiler_options=model_lib.compiler_options(config.model),
    )
    return cls(
      config=config,
      mesh=mesh,
      model=parts.model,
      objectives=parts.objectives,
      tx=parts.tx,
      abstract_state=parts.abstract_state,
      state_shardings=state_shardings,
      local_batch_size=local_batch,
      train_step=train_step,
    )

  # ---- State ----

  def init_state(self) -> state_lib.TrainState:
    """The step-0 state, each array created in its sharding; with the weights of
    `config.init_from` (a trained model), else of pretrained towers (`config.model.*.init`)."""
    state = jax.jit(
      lambda r: state_lib.create(self.model, self.objectives, self.tx, self.config, r),
      out_shardings=self.state_shardings,
    )(jax.random.PRNGKey(self.config.seed))
    params, batch_stats = {}, {}
    if self.config.init_from:
      params, batch_stats = self._trained_weights(self.config.init_from)
    # A trained model's towers replace the pretrained ones it started from.
    if (self.config.model.image.init or self.config.model.text.init) and not self.config.init_from:
      towers, tower_stats = convert.load_pretrained(
        self.config, self.abstract_state.params, self.abstract_state.batch_stats
      )
      params.update(towers)
      batch_stats.update(tower_stats)
    if not params and not batch_stats:
      return state
    # Every process reads the files and places its own shards of them.
    place = lambda new, shardings: jax.device_put(new, {k: shardings[k] for k in new})
    return state.replace(
      params={**state.params, **place(params, self.state_shardings.params)},
      batch_stats={**state.batch_stats, **place(batch_stats, self.state_shardings.batch_stats)},
    )

  def _trained_weights(self, path) -> tuple[dict, dict]:
    """The parameters and BatchNorm statistics of the model in `path` that this state has.

    The optimizer state and step start afresh; parameters only one side has
    (an objective's, like the sigmoid loss's bias) keep their initial values.
    """
    from medclip_jax.interop import load  # pylint: disable=import-outside-toplevel (load uses this)

    loaded = load.load(path, decoders=True).variables
    out = []
    for collection in ('params', 'batch_stats'):
      target = getattr(self.abstract_state, collection)
      given = {k: v for k, v in jax.device_get(loaded[collection]).items() if k in target}
      shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
      wrong = [k for k in given if shapes(given[k]) != shapes(target[k])]
      if wrong:
        raise UserError(
          f'config.init_from={path!r} holds a model whose {", ".join(wrong)} ({collection}) '
          'differ in shape from the model of this config: give config.model the sizes it '
          'was trained with.'
        )
      out.append(given)
    return out[0], out[1]

  def restore_state(self, checkpointer, step: int, data_iterator) -> state_lib.TrainState:
    """Checkpoint `step`, resharded onto this mesh; `data_iterator` moves to its position."""
    target = checkpointing.abstract_like(self.abstract_state, self.state_shardings)
    return checkpointer.restore(step, target, data_iterator)

  # ---- Data ----

  def train_batches(
    self,
    seed: int | None = None,
    data_dir: str | None = None,
    text_features=None,
    paired_only: bool = False,
  ):
    """This process's training batches (endless, checkpointable), as the trainer reads them.

    `seed` defaults to the config's; `data_dir` reads another prepared directory;
    `text_features` (`locked_text_features`) go with each example; `paired_only` leaves
    unpaired data out (precise-BN's statistics are of real images).
    """
    data = self.config.data
    if data_dir is not None:
      data = data.copy_and_resolve_references()
      data.dir = str(data_dir)
    return pipeline.train_iterator(
      data,
      seed=self.config.seed if seed is None else seed,
      local_batch_size=self.local_batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      text_features=text_features,
      entity_masking=(
        entities.EntityMasking.from_config(self.config.entmlm)
        if 'entmlm' in self.objectives
        else None
      ),
      paired_only=paired_only,
    )

  def locked_text_features(
    self, params, info: dict, placeholder: bool = False
  ) -> tuple[np.ndarray | None, str]:
    """The text tower's features of every training text, computed once, when
    `config.train.cache_locked_text` asks and nothing changes them during the run: (features
    [records, C] in split order, or None; a line saying which and why).

    The tower must be locked (every parameter at multiplier 0: it never changes), each
    record must have one text (one caption, or a label template), and flips must not
    rewrite captions (hflip_prob 0, or laterality 'skip'). As LiT does, the step then
    projects these features instead of running the tower. `placeholder` gives zeros of
    their shape instead (the benchmark: their values do not change the step's time).
    """
    train, data = self.config.train, self.config.data
    if not train.get('cache_locked_text', False):
      return None, ''
    counts = info.get('splits', {}).get(data.train_split, {})
    blockers = [
      ('text_encoder' not in optimizer_lib.locked_towers(train, params), 'text tower not locked'),
      (
        data.hflip_prob > 0 and data.laterality == 'swap',
        'flips rewrite captions (config.data.laterality=swap)',
      ),
      (
        'captions' not in counts,
        "the dataset's info does not count its captions (build or prepare it again)",
      ),
      (counts.get('captions') != counts.get('count'), 'some images have several captions'),
      ('attmim' in self.objectives, "AttMIM reads the tower's token states"),
      (bool(pipeline.unpaired_shares(data)), 'unpaired data is mixed in'),
    ]
    why_not = next((reason for blocked, reason in blockers if blocked), '')
    if why_not:
      return (
        None,
        f'config.train.cache_locked_text: not cached ({why_not}); the tower runs each step',
      )
    if placeholder:
      return np.zeros((counts['count'], self.config.model.text.hidden_size), np.float32), ''
    start = time.perf_counter()
    preprocess = pipeline.Preprocess(data, train=True)
    texts = pipeline.train_texts(data)
    encode = jax.jit(
      lambda p, ids, mask: self.model.apply(
        {'params': p}, ids, mask, train=False, method=model_lib.MedCLIP.text_features
      ),
      out_shardings=sharding.replicated(self.mesh),
    )
    size = self.config.eval.batch_size
    out = []
    for begin in range(0, len(texts), size):
      # Tokenized a batch at a time: all at once, 1.6 million captions' ids would take 1.6 GB.
      tokens = [preprocess.tokenize(t)[:2] for t in texts[begin : begin + size]]
      chunk = {'ids': np.stack([t[0] for t in tokens]), 'mask': np.stack([t[1] for t in tokens])}
      short = size - len(chunk['ids'])
      chunk = {k: np.pad(v, ((0, short), (0, 0))) for k, v in chunk.items()}
      placed = sharding.from_host_copy(chunk, self.mesh)
      out.append(np.asarray(encode(params, placed['ids'], placed['mask']))[: size - short])
    features = np.concatenate(out).astype(np.float32)
    return features, (
      f'locked text tower: its features of the {len(texts)} training texts computed once in '
      f'{time.perf_counter() - start:.1f}s, projected each step instead of running it'
    )

  def global_batch(self, local_batch):
    """This process's rows as arrays sharded over the whole mesh."""
    return sharding.to_global_batch(local_batch, self.mesh)

  # ---- Evaluation ----

  def evaluation(self, label_vocabs: dict) -> Evaluation:
    """The configured evaluators (`config.evals`) on `config.eval.split`."""
    return Evaluation(self.model, self.config, self.mesh, label_vocabs)

  def precise_bn(self) -> PreciseBN:
    """The BatchNorm recomputation run before each evaluation."""
    return PreciseBN(self.model, self.config, self.mesh)
