"""Tests of the packaging (pyproject.toml): the package builds and installs with pip, offline,
and the installed copy loads an export in PyTorch on its own, holds medclip_jax only, and its
console scripts run the commands.

pip (21.3 and later) builds a local directory in place, and setuptools writes build/ and
medclip_jax.egg-info/ into it; so the repository is copied to a temporary directory (without
.git, .venv and other ignored output) and installed from the copy, which leaves the checkout
as it was.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The commands run via medclip_jax.cli.run, as console scripts.
SCRIPTS = {
  'medclip-train',
  'medclip-evaluate',
  'medclip-export',
  'medclip-predict',
  'medclip-prepare',
  'medclip-benchmark',
  'medclip-compare',
  'medclip-inference-benchmark',
}

# Top-level names of the checkout that a build does not read (ignored output and caches).
_NOT_COPIED = {'.git', '.venv', 'build', 'dist', 'runs', 'data', '.pytest_cache', '.ruff_cache'}


def _ignore(directory, names):
  top = Path(directory) == ROOT
  return {
    n
    for n in names
    if n == '__pycache__'
    or n.endswith(('.pyc', '.egg-info'))
    or (top and (n in _NOT_COPIED or n.startswith('.whl')))
  }


def _run(*args, **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
  assert result.returncode == 0, result.stdout + result.stderr
  return result


@pytest.fixture(scope='module')
def site(tmp_path_factory):
  """The package installed with pip into a fresh --target directory."""
  left_before = {p.name for p in ROOT.iterdir() if p.name == 'build' or p.suffix == '.egg-info'}
  source = tmp_path_factory.mktemp('source') / 'medclip_jax_checkout'
  shutil.copytree(ROOT, source, ignore=_ignore, symlinks=True)
  target = tmp_path_factory.mktemp('install') / 'site'
  env = {**os.environ, 'PIP_DISABLE_PIP_VERSION_CHECK': '1', 'PIP_NO_INPUT': '1'}
  _run(
    sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
    '--no-cache-dir', '--target', str(target), str(source),
    env=env,
  )  # fmt: skip
  left_after = {p.name for p in ROOT.iterdir() if p.name == 'build' or p.suffix == '.egg-info'}
  assert left_after == left_before, 'the install wrote build output into the checkout'
  return target


def test_the_installed_package_loads_an_export_in_torch_without_the_checkout(
  site, trained_run, tmp_path
):
  from medclip_jax.interop import export  # pylint: disable=import-outside-toplevel

  _, workdir, _ = trained_run
  exported = export.export(str(workdir), str(tmp_path / 'export'))
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
  env['PYTHONPATH'] = str(site)
  code = (
    'import importlib.util, sys, torch, medclip_jax\n'
    'from medclip_jax.torch_model import MedCLIP\n'
    'model = MedCLIP.from_export(sys.argv[1]).eval()\n'
    'with torch.no_grad():\n'
    '  text = model.encode_text(**model.tokenize(["CT of the brain."]))\n'
    'print(medclip_jax.__file__, tuple(text.shape))\n'
    # The checkout's other top-level packages are neither installed nor on the path.
    'print(importlib.util.find_spec("configs") is None and importlib.util.find_spec("tests") is None)'
  )
  out = _run(sys.executable, '-c', code, str(exported), cwd=elsewhere, env=env).stdout
  *_, loaded, checkout_hidden = out.splitlines()
  package, shape = loaded.split(' ', 1)
  assert Path(package).resolve().is_relative_to(site.resolve()), package
  assert shape == '(1, 32)' and checkout_hidden == 'True'


def test_only_medclip_jax_and_all_its_subpackages_are_installed(site):
  tops = {p.name for p in site.iterdir() if p.name != 'bin' and not p.name.endswith('.dist-info')}
  assert tops == {'medclip_jax'}
  wanted = {
    p.parent.relative_to(ROOT).as_posix() for p in (ROOT / 'medclip_jax').rglob('__init__.py')
  }
  installed = {p.parent.relative_to(site).as_posix() for p in site.rglob('__init__.py')}
  assert installed == wanted
  sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'medclip_jax').rglob('*.py')}
  assert sources <= {p.relative_to(site).as_posix() for p in site.rglob('*.py')}


def test_the_console_scripts_are_installed_and_run_the_commands(site, tmp_path):
  (dist_info,) = site.glob('medclip_jax-*.dist-info')
  text = (dist_info / 'entry_points.txt').read_text()
  lines = text.split('[console_scripts]', 1)[1].split('\n[', 1)[0].splitlines()
  declared = {ln.partition('=')[0].strip() for ln in lines if ln.strip()}
  assert declared == SCRIPTS
  # One of them, run as a user would: a workdir that does not exist is one paragraph, exit 2,
  # and no directory is created.
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
  env['PYTHONPATH'] = str(site)
  result = subprocess.run(
    [str(site / 'bin' / 'medclip-export'), '--workdir=runs/nonexist', '--out=exported'],
    capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
  )  # fmt: skip
  assert result.returncode == 2, result.stdout + result.stderr
  assert 'No checkpoints in' in result.stderr and 'Traceback' not in result.stderr
  assert list(tmp_path.iterdir()) == []


def test_the_installed_package_requires_the_pins_of_requirements_txt(site):
  (dist_info,) = site.glob('medclip_jax-*.dist-info')
  required = {
    line.split(': ', 1)[1].replace(' ', '')
    for line in (dist_info / 'METADATA').read_text().splitlines()
    if line.startswith('Requires-Dist:') and 'extra ==' not in line
  }
  pinned = {
    line.split('#')[0].strip()
    for line in (ROOT / 'requirements.txt').read_text().splitlines()
    if line.split('#')[0].strip()
  }
  assert required == pinned and 'jax==0.10.2' in required
