"""What every command does with its command line before and around its work.

`run(main)` replaces `absl.app.run(main)`: a mistake on the command line (a
missing config file, an override naming a field the config lacks, a value of
the wrong type, a required flag left out) and a `UserError` raised by the
command are printed as one paragraph with exit status 2, not a traceback.
It also turns on JAX's persistent compilation cache (`compilation_cache_dir`),
and first restarts the command with glibc's allocator set for XLA:CPU
(`glibc_restart`): transparent huge pages for large blocks, and on the CPU
backend heaps that serve large blocks and keep what is freed from one step to
the next.
"""

import difflib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

from medclip_jax.errors import UserError

_SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / 'configs'


def fail(message: str) -> NoReturn:
  """Prints `message` as the command's error and exits with status 2."""
  print(f'\nerror: {message}\n', file=sys.stderr, flush=True)
  sys.exit(2)


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
  return [
    name
    for name, flag in flag_values._flags().items()  # pylint: disable=protected-access
    # ml_collections' config file flags are the flags that know their file.
    if hasattr(type(flag), 'config_filename')
  ]


def _given(name: str, argv: Sequence[str]) -> str | None:
  """The value of the last `--name=VALUE` on `argv`, if any."""
  given = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return given[-1] if given else None


def _missing_config_file(name: str, argv: Sequence[str]) -> str:
  path = (_given(name, argv) or '?').split(':', 1)[0]
  # default.py holds shared defaults and is not runnable by itself.
  shipped = sorted(
    p.name for p in _SHIPPED_CONFIGS.glob('*.py') if p.name not in ('__init__.py', 'default.py')
  )
  hint = f' The configs shipped with medclip_jax: {", ".join(shipped)} in {_SHIPPED_CONFIGS}.'
  return (
    f'--{name}={path}: there is no such config file (looked for {Path(path).resolve()}). '
    'A config file is a Python file with a get_config() function; give its path from the '
    f'directory you run in.{hint if shipped else ""}'
  )


def _unknown_field(argv: Sequence[str], error: Exception, flag_values: flags.FlagValues) -> str:
  """The message for an override whose path names a field the config lacks."""
  text = str(error).strip('\'"').replace('\\n', '\n').replace("\\'", "'")
  missing = re.search(r"'([^']+)'", text)
  key = missing.group(1) if missing else text.splitlines()[0]
  for arg in argv:
    flag = arg.partition('=')[0].lstrip('-')
    name, *path = flag.split('.')
    if name in _config_flag_names(flag_values) and key in path:
      parent = [name, *path[: path.index(key)]]
      below = path[path.index(key) + 1 :]
      break
  else:
    return f'A config override names a field the config does not have: {key!r}.'
  known = sorted(_fields(flag_values, argv, parent))
  close = difflib.get_close_matches(key, known, n=1)
  where = '.'.join(parent)
  if close:
    suggestion = f'did you mean --{".".join([*parent, close[0], *below])}? '
  else:  # the field may live elsewhere: config.evals.zeroshot, not config.eval.zeroshot
    found = _paths_to(flag_values, argv, parent[0], key)
    suggestion = f'did you mean --{".".join([*found[0], *below])}? ' if found else ''
  return (
    f'{arg}: {suggestion}The config has no field {key!r} in {where} '
    f'(its fields: {", ".join(known) or "none"}). The command line can only change fields '
    'the config file defines; add new ones in a config file.'
  )


def _loaded(flag_values: flags.FlagValues, argv: Sequence[str], name: str):
  """The config file flag `name` names on `argv`, loaded as it is without overrides (they
  are applied while the flag is parsed, so it has no value yet); None if not given."""
  given = _given(name, argv)
  return None if given is None else flag_values[name].parser.parse(given)


def _fields(flag_values: flags.FlagValues, argv: Sequence[str], path: list[str]) -> list[str]:
  """The field names at `path` (['config', 'train']) of the config file named on `argv`."""
  name, *keys = path
  node = _loaded(flag_values, argv, name)
  if node is None:
    return []
  for key in keys:
    node = node[key] if key in node else {}
  return list(node.keys()) if hasattr(node, 'keys') else []


def _paths_to(flag_values: flags.FlagValues, argv: Sequence[str], name: str, key: str) -> list:
  """The paths (['config', 'evals', 'zeroshot']) of every field named `key`, shortest first."""
  found = []

  def walk(node, path):
    for child in node.keys():
      if child == key:
        found.append([*path, child])
      if hasattr(node[child], 'keys'):
        walk(node[child], [*path, child])

  root = _loaded(flag_values, argv, name)
  if root is not None:
    walk(root, [name])
  return sorted(found, key=len)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`absl.app`'s flag parsing, with the user's mistakes as one paragraph, exit 2."""
  flag_values = flags.FLAGS
  for name in _config_flag_names(flag_values):
    _importable_package_of(_given(name, argv))
  try:
    rest = flag_values(argv)
  except OSError as e:
    # An override applied to a config file that failed to load.
    if 'earlier failure to load' in str(e):
      for name in _config_flag_names(flag_values):
        if _given(name, argv) is not None:
          fail(_missing_config_file(name, argv))
    raise
  except (AttributeError, KeyError) as e:
    fail(_unknown_field(argv, e, flag_values))
  except flags.Error as e:
    message = str(e)
    arguments = re.search(r'get_config\(\) takes (\d+) positional argument', message)
    given = re.match(r'flag --(\w+)=([^:\s]+):(\S*): Error whilst parsing', message)
    if arguments and given:
      name, file, argument = given.groups()
      fail(
        f'--{name}={file}:{argument}: {file} takes '
        + ('no argument after ":"' if arguments.group(1) == '0' else 'another number of arguments')
        + f'. Give --{name}={file}, and the data directory with --config.data.dir=DIR '
        '(configs/manifest.py is the recipe that takes one: configs/manifest.py:DIR).'
      )
    bad = re.match(r'flag --([^=]+)=', message)
    if bad and bad.group(1) in flag_values and flag_values[bad.group(1)].default is not None:
      wanted = type(flag_values[bad.group(1)].default).__name__
      message += f' (this field takes a {wanted})'
    fail(
      f'{message.rstrip(".")}. See --helpshort for the flags; configs/default.py lists every '
      'config field.'
    )
  for name in _config_flag_names(flag_values):
    if _load_error(flag_values, name):
      fail(_missing_config_file(name, argv))
  return rest


def _importable_package_of(config_file: str | None) -> None:
  """Puts the folder above a config file's package (configs/) on the import path, so that its
  `from configs import default` works where the command is installed rather than run from
  the clone's root."""
  if not config_file:
    return
  folder = Path(config_file.split(':', 1)[0]).absolute().parent
  if (folder / '__init__.py').is_file() and str(folder.parent) not in sys.path:
    sys.path.insert(0, str(folder.parent))


def _load_error(flag_values: flags.FlagValues, name: str) -> bool:
  """Whether the config file flag `name` names a file that failed to load."""
  try:
    getattr(flag_values[name].value, 'keys', None)
  except (OSError, flags.Error):
    return True
  return False


def compilation_cache_dir(environ=os.environ) -> str:
  """Where compiled programs are kept between runs: $JAX_COMPILATION_CACHE_DIR if set,
  else $XDG_CACHE_HOME/medclip_jax/xla (~/.cache/medclip_jax/xla)."""
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return environ['JAX_COMPILATION_CACHE_DIR']
  cache_home = environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
  return str(Path(cache_home) / 'medclip_jax' / 'xla')


def _use_compilation_cache() -> None:
  # A rerun, a resumed run or an evaluation of the same shapes then loads the
  # train step and encoders instead of compiling them again (minutes for a
  # full-size model). JAX reads the variable when imported; a command that has
  # imported it already is told directly.
  directory = compilation_cache_dir()
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  if 'jax' in sys.modules:
    sys.modules['jax'].config.update('jax_compilation_cache_dir', directory)


def _glibc_version() -> tuple[int, ...] | None:
  libc, version = platform.libc_ver()
  if libc != 'glibc' or not re.fullmatch(r'\d+\.\d+.*', version):
    return None
  return tuple(int(p) for p in version.split('.')[:2])


# glibc (2.35 and later) then advises the kernel to back every block it maps
# (the large ones: XLA:CPU's temporaries, gigabytes at full size) with 2 MiB
# pages, which a step faults in 512 times fewer of. Measured in BENCHMARKS.md.
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'
# Where JAX runs on the CPU: glibc serves large blocks from its heaps instead of
# mapping each afresh, and never gives freed heap back, so later steps reuse
# pages already resident instead of faulting in (and the kernel zeroing) fresh
# ones. A block larger than another thread's 64 MiB heaps is still mapped afresh:
# XLA's block of a step's temporaries (1.35 GB for ResNet50's gradient), which
# the thread running the executable allocates, and Eigen's convolution buffers.
# Limiting glibc to one arena kept those too, but made XLA's parallel compilation
# 30-50% slower and cost one step's temporaries of peak memory. This setting
# keeps peak memory; short, compile-bound runs took about 7% longer
# (BENCHMARKS.md).
KEEP_HEAP_TUNABLES = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776'
# Set beside GLIBC_TUNABLES when the restart sets it, so that the environment the
# user started the command in can be told apart (the PyTorch reference runs in it).
_ADDED_MARK = 'MEDCLIP_JAX_ADDED_GLIBC_TUNABLES'


def huge_pages_help(thp_setting: str = _THP_SETTING) -> bool:
  """Whether HUGE_PAGES_TUNABLE would change anything here: glibc 2.35 or later, and a
  kernel that leaves transparent huge pages to madvise ('always' gives them to every
  block already, 'never' refuses them)."""
  version = _glibc_version()
  if version is None or version < (2, 35):
    return False
  try:
    with open(thp_setting, encoding='ascii') as f:
      return '[madvise]' in f.read()
  except OSError:
    return False


def runs_on_cpu(environ=os.environ) -> bool:
  """Whether JAX will run this process on its CPU backend: JAX_PLATFORMS names cpu first,
  or is unset and no accelerator plugin (CUDA, ROCm: entry points in the 'jax_plugins'
  group; TPU: libtpu) is installed. Answered without importing JAX."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  accelerator = importlib.metadata.entry_points(group='jax_plugins') or any(
    importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu')
  )
  return not accelerator


def glibc_tunables(environ=os.environ) -> str:
  """The GLIBC_TUNABLES a command restarts with here ('' for none): HUGE_PAGES_TUNABLE
  where huge pages help, KEEP_HEAP_TUNABLES where JAX runs on the CPU (glibc 2.26, the
  first with tunables, or later)."""
  parts = [HUGE_PAGES_TUNABLE] if huge_pages_help() else []
  version = _glibc_version()
  if version is not None and version >= (2, 26) and runs_on_cpu(environ):
    parts.append(KEEP_HEAP_TUNABLES)
  return ':'.join(parts)


def glibc_restart(environ=os.environ) -> list[str] | None:
  """The command line to restart this process with, after setting GLIBC_TUNABLES to
  `glibc_tunables()` in `environ`; None, `environ` unchanged, where the user set
  GLIBC_TUNABLES (to anything, even empty: the way to opt out), no tunable would help
  here, or there is no program file to restart (python -c, a script on stdin)."""
  if 'GLIBC_TUNABLES' in environ or not os.path.isfile(sys.argv[0]):
    return None
  tunables = glibc_tunables(environ)
  if not tunables:
    return None
  environ['GLIBC_TUNABLES'] = tunables
  environ[_ADDED_MARK] = '1'
  return [sys.executable, *sys.orig_argv[1:]]


def added_environment(environ=os.environ) -> list[str]:
  """The variables of `environ` that `glibc_restart` added, not the user."""
  return ['GLIBC_TUNABLES', _ADDED_MARK] if environ.get(_ADDED_MARK) else []


def run(main: Callable[[list[str]], None]) -> None:
  """Runs a command's `main(argv)` the way every medclip_jax command runs."""
  restart = glibc_restart()
  if restart:
    # exec keeps the process id, so a launcher's signals still reach the command.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(restart[0], restart)

  def guarded(argv: list[str]) -> None:
    _use_compilation_cache()
    if not flags.FLAGS['verbosity'].present:
      # Orbax and grain log every file operation at INFO; --verbosity=0 shows it.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)
