#!/usr/bin/env bash
# GPU checks for a lent CUDA machine: CUDA parity of exported models under onnxruntime-gpu (provider asserted),
# CUDA latency of quadratic models vs ReLU baselines, and the CUDA/bf16 training path.
#
# The GPU machine has torch+CUDA but only CPU onnxruntime and no internet. Send the onnxruntime-gpu wheel in parts
# (it is over one call's 64 MiB) into build/wheels/, e.g. here:
#     pip download --no-deps -d build/wheels onnxruntime-gpu==1.31.1 && split -b 60m build/wheels/onnxruntime_gpu-*.whl build/wheels/ortgpu.part.
# then carry build/wheels over consecutive calls; this script reassembles it. Usage (on the device):
#     bash tools/gpu_check.sh [OUT_DIR]        # default $OUT or reports/gpu
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-reports/gpu}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/gpu_check.log"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/gpu_check.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  | tee -a "$OUT/gpu_check.log"

log "install quadexport (no network: deps must already be there or in build/wheels)"
if ls build/wheels/ortgpu.part.* >/dev/null 2>&1 && ! ls build/wheels/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
  cat build/wheels/ortgpu.part.* > build/wheels/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
fi
$PY -m pip install -q --no-index --find-links build/wheels onnx onnxscript onnx-ir onnxruntime-gpu 2>&1 | tail -2
$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu_check.log"

log "CUDA training path (bf16 autocast, quadratic products in fp32)"
$PY -m quadexport train --model resnet8 --neuron fan --dataset digits --epochs 3 --device cuda --amp bf16 \
  --out "$OUT/runs/resnet8-fan-cuda" 2>&1 | tail -4 | tee -a "$OUT/gpu_check.log"

log "CUDA parity (provider asserted: no silent CPU fallback)"
for mode in decomposed function; do
  $PY -m quadexport export "$OUT/runs/resnet8-fan-cuda" "$OUT/resnet8-$mode.onnx" --mode "$mode" >/dev/null 2>&1
  $PY -m quadexport check "$OUT/resnet8-$mode.onnx" "$OUT/runs/resnet8-fan-cuda" --provider cuda \
    --json "$OUT/parity-cuda-$mode.json" 2>&1 | tail -3 | tee -a "$OUT/gpu_check.log"
done

log "CUDA latency: QResNet20/ResNet20/ResNet56 and QResNet8/ResNet8, batch 1 and 64"
$PY -m quadexport bench resnet8 resnet20 --neuron fan --provider cuda --batch 1 64 --mode decomposed torch \
  --min-seconds 2 --out "$OUT/bench-cuda" 2>&1 | tail -30 | tee -a "$OUT/gpu_check.log"
echo "results in $OUT"
