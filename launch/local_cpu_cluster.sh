#!/usr/bin/env bash
# Runs N processes of medclip_jax.main on this machine, over CPU devices, joined
# by jax.distributed exactly as on a GPU cluster or TPU pod (collectives over
# gloo). Used by the tests; handy to debug multi-host behaviour on a laptop.
#
#   launch/local_cpu_cluster.sh N [main.py flags...]
#   DEVICES_PER_PROCESS=2 launch/local_cpu_cluster.sh 2 --config=configs/demo.py --workdir=runs/cluster
#
# Process 0 prints to the terminal; process i>0 writes $LOG_DIR/process_<i>.log
# (LOG_DIR defaults to a fresh temporary directory). Ctrl-C or SIGTERM stops every
# process at one checkpoint (exit 0). Exits non-zero if any process fails.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [medclip_jax.main flags...]" >&2
  exit 2
fi
n=$1
shift
# Relative flags (--config, --workdir) keep naming paths from where the script is run.
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3
port=${PORT:-$((20000 + RANDOM % 20000))}
log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1} ${XLA_FLAGS:-}"

echo "processes 1..$((n - 1)) write their logs to $log_dir" >&2

# Each process in a process group of its own (job control), so that Ctrl-C reaches this
# script alone, which passes the processes one SIGTERM: they stop together at a
# checkpoint, as a preempted cluster job does. A second Ctrl-C passes a second: at once.
set -m
pids=()
for ((i = 0; i < n; i++)); do
  cmd=("$python" -m medclip_jax.main --distributed "--coordinator_address=127.0.0.1:$port"
       "--num_processes=$n" "--process_id=$i" "$@")
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
set +m
# A closed terminal (HUP) stops them too: they would run on orphaned, holding the workdir.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM HUP
status=0
for i in "${!pids[@]}"; do
  # A trapped signal interrupts `wait` (status above 128) while the process runs on.
  while true; do
    code=0
    wait "${pids[$i]}" || code=$?
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  if ((code != 0)); then
    if ((i == 0)); then
      echo "process 0 failed (exit status $code; its output is above)" >&2
    else
      echo "process $i failed (exit status $code); see $log_dir/process_$i.log" >&2
    fi
    status=1
  fi
done
exit $status
