#!/usr/bin/env bash
# The GPU check: one H100/H200, at most ~6 minutes, no network, no TensorFlow.
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]            # default: $OUT if set, else benchmarks/gpu_results
#   benchmarks/gpu_check.sh --smoke /tmp/x          # tiny sizes on any machine (also GPU_CHECK_SMOKE=1)
#   ROWS=train_step,checkpoint benchmarks/gpu_check.sh   # some rows only
#   TIMEOUT_SCALE=2 benchmarks/gpu_check.sh         # a slow first compile: twice every time limit
#
# Rows (benchmarks/gpu_check.py says what each measures): the ResNet-50 bf16 train
# step at batch 256 (images/s, MFU against the data-sheet dense bf16 peak, peak device
# memory); compile counts of the loop's step functions; an orbax async save + restore
# of a ResNet-50 train state; host-to-device GB/s of float32 and uint8 batches; the
# loop against the bare step at 256 and 32 images per GPU.
#
# A preflight stops the script (exit 2) unless JAX sees a GPU (not needed with
# --smoke) and jax, flax, optax and orbax import (exit 3). Every row is its own
# process under `timeout`; the limits add up to 6 minutes. Writes OUTPUT_DIR/gpu_check.md
# (the table, also printed), gpu_check.json and rows/<row>.json; exits 1 when any row
# failed or timed out. Uses $PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

smoke="${GPU_CHECK_SMOKE:-0}"
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
out="${1:-${OUT:-benchmarks/gpu_results}}"
python="${PYTHON:-python3}"
scale="${TIMEOUT_SCALE:-1}"
mkdir -p "$out/rows"
rm -f "$out"/rows/*.json "$out"/rows/*.exit
smoke_flag=()
if [[ "$smoke" == "1" ]]; then smoke_flag=(--smoke); fi
export TF_CPP_MIN_LOG_LEVEL=2
# One persistent compilation cache for this run: the compile-count and checkpoint rows
# load what the train-step row compiled instead of compiling ResNet-50 again.
cache_dir="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_cache.XXXXXX")"
trap 'rm -rf "$cache_dir"' EXIT
export JAX_COMPILATION_CACHE_DIR="$cache_dir"

limit() {  # seconds x TIMEOUT_SCALE, as an integer
  awk -v s="$1" -v k="$scale" 'BEGIN { printf "%d", s * k }'
}

timeout "$(limit 15)" "$python" -m benchmarks.gpu_check preflight ${smoke_flag[@]+"${smoke_flag[@]}"}
status=$?
if ((status != 0)); then
  echo "gpu_check: preflight failed (exit $status); no row was run" >&2
  exit "$status"
fi

# row  time limit (s)
rows=(
  "train_step 90"
  "compile_counts 45"
  "checkpoint 30"
  "host_to_device 20"
  "device_input 30"
  "loop_b256 90"
  "loop_b32 70"
)
selected="${ROWS:-}"
names=()
for row in "${rows[@]}"; do
  read -r name seconds <<<"$row"
  if [[ -n "$selected" && ",$selected," != *",$name,"* ]]; then continue; fi
  names+=("$name")
  echo "== $name (limit $(limit "$seconds") s)"
  timeout --kill-after=10 "$(limit "$seconds")" "$python" -m benchmarks.gpu_check row "$name" \
      --output_dir "$out" ${smoke_flag[@]+"${smoke_flag[@]}"}
  code=$?
  echo "$code" > "$out/rows/$name.exit"
  if ((code != 0)); then echo "!! $name failed (exit $code); continuing" >&2; fi
done

if ((${#names[@]} == 0)); then
  echo "gpu_check: ROWS=$selected selects no row; rows: train_step,compile_counts,checkpoint,host_to_device,device_input,loop_b256,loop_b32" >&2
  exit 1
fi
names_csv="$(IFS=,; echo "${names[*]}")"
timeout 60 "$python" -m benchmarks.gpu_check table --output_dir "$out" \
    --rows "$names_csv" ${smoke_flag[@]+"${smoke_flag[@]}"}
