#!/usr/bin/env bash
# The GPU check, then the GPU train-step table: one accelerator (sized for one
# H100/H200), no network, no TensorFlow, no ml_collections (only jax, flax, optax and
# this repository).
#
#   benchmarks/gpu.sh [OUTPUT_DIR]        # default: $OUT if set, else benchmarks/gpu_results
#
# First runs benchmarks/gpu_check.sh into OUTPUT_DIR/check (about 6 minutes; with
# SMOKE=1 its --smoke mode); exits non-zero at its preflight (no GPU) and, after the
# table, when any check row failed. The table below takes several minutes more.
#   TORCH=1 benchmarks/gpu.sh             # also time the torchvision twins (if installed)
#   STEPS=30 WARMUP=5 benchmarks/gpu.sh   # more timed steps
#   SMOKE=1 benchmarks/gpu.sh /tmp/x      # one tiny row: checks the script itself (CPU is fine)
#
# Writes one JSON report per row group plus gpu_table.md (markdown, the table for
# benchmarks/RESULTS.md section "gpu") into OUTPUT_DIR. MFU divides by the dense
# peak of the device's data sheet (bf16 989 TFLOP/s on H100 SXM / H200; float32
# runs in TF32 by default, 495 TFLOP/s); override with PEAK_FLOPS=...
# The ResNet-50 row also times `cpu_kernels` (cnnjax.models.kernels forced on: the
# formulations that help XLA:CPU, off by default elsewhere), to see what they do on a GPU.
# What augment_kwargs photometric="device" costs on the GPU (uint8 batch, colour distortions
# and normalisation inside the step) is a separate run, kept out of the table so that no
# more workers share the GPU's memory at float32 batch 256:
#   python -m benchmarks.train_step --models resnet50 --batch_sizes 256 --image_sizes 224 \
#       --dtypes bfloat16 --no-torch --patches= --patches=device_photometric
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-${OUT:-benchmarks/gpu_results}}"
mkdir -p "$out"
steps="${STEPS:-20}"
warmup="${WARMUP:-5}"
torch_flag="--no-torch"
if [[ "${TORCH:-0}" == "1" ]]; then torch_flag="--torch"; fi
peak=()
if [[ -n "${PEAK_FLOPS:-}" ]]; then peak=(--peak_flops "$PEAK_FLOPS"); fi
export TF_CPP_MIN_LOG_LEVEL=2

check_status=0
check_flag=()
if [[ "${SMOKE:-0}" == "1" ]]; then check_flag=(--smoke); fi
benchmarks/gpu_check.sh ${check_flag[@]+"${check_flag[@]}"} "$out/check" || check_status=$?
if ((check_status == 2 || check_status == 3)); then exit "$check_status"; fi  # preflight

python - <<'EOF'
import importlib.util
for name in ("tensorflow", "ml_collections"):
  if importlib.util.find_spec(name):
    print(f"note: {name} is installed; the benchmark does not import it")
import jax
print("devices:", jax.devices())
EOF

# model  batch  image  dtypes  [extra arguments]
rows=(
  "resnet50 256 224 bfloat16,float32 --patches= --patches=cpu_kernels"
  "resnet152 128 224 bfloat16"
  "vgg16 128 224 bfloat16"
  "googlenet 256 224 bfloat16"
  "alexnet 512 224 bfloat16"
  "cifar_resnet56 128 32 bfloat16,float32"
)
if [[ "${SMOKE:-0}" == "1" ]]; then  # the script's own check, on any machine
  rows=("cifar_resnet20 2 32 float32 --patches= --patches=cpu_kernels --patches=device_photometric")
  steps=1 warmup=0
fi
reports=()
for row in "${rows[@]}"; do
  read -r model batch size dtypes extra <<<"$row"
  report="$out/train_step_${model}_b${batch}.json"
  echo "== $model batch $batch ${size}px $dtypes"
  if python -m benchmarks.train_step --models "$model" --batch_sizes "$batch" \
      --image_sizes "$size" --dtypes "$dtypes" --steps "$steps" --warmup "$warmup" \
      --rounds 2 "$torch_flag" --torch_modes eager,compile ${peak[@]+"${peak[@]}"} ${extra:-} \
      --output "$report"; then
    reports+=("$report")
  else
    echo "!! $model failed; continuing" >&2
  fi
done

if ((${#reports[@]})); then
  python -m benchmarks._report "${reports[@]}" > "$out/gpu_table.md"
  cat "$out/gpu_table.md"
fi
if ((check_status != 0)); then
  echo "gpu.sh: benchmarks/gpu_check.sh failed (exit $check_status): see $out/check/gpu_check.md" >&2
  exit "$check_status"
fi
