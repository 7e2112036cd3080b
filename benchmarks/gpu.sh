#!/usr/bin/env bash
# The GPU path in one prepared run (a few minutes on an H100/H200; stops within 8):
# set-up, the gpu-marked tests, then every benchmark on the device, all into one log.
#
#   benchmarks/gpu.sh [--device cuda] [--log gpu-bench.log] [--tiny] [--no-setup]
#
#   --device   torch device for the tests and benchmarks (default cuda; cpu for a dry run)
#   --log      the one log file (default gpu-bench.log in the repository root)
#   --tiny     tiny sizes: a dry run of every step in a minute or two on a CPU
#   --no-setup use the python on PATH (or $NSE_PYTHON) as it is
#
# Set-up: the .venv if it has torch; else a .venv that sees the machine's own torch
# (--system-site-packages), then `pip install -e .[testing]`. torch itself is never installed
# here: the machine's build is the one to measure. Without network the install is skipped and
# the package runs from src/ (PYTHONPATH), with what the machine has.
# Each step has its own time limit, and the whole run stops by NSE_GPU_BUDGET seconds (default
# 450, set-up included); a failing step is logged and the others still run. The
# summary at the end lists every step with its exit status and seconds; the exit status is
# non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
LOG=gpu-bench.log
TINY=0
SETUP=1
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --log) LOG="$2"; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --no-setup) SETUP=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

: > "$LOG"
say() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
SUMMARY=()
FAILED=0

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to what is left of the run's
# budget, NSE_GPU_BUDGET seconds from the start, default 450), output into the log
BUDGET="${NSE_GPU_BUDGET:-450}"
step() {
    local name="$1" limit="$2"; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
        say "== $name: skipped, the ${BUDGET} s budget is spent"
        SUMMARY+=("$(printf '%-34s skipped (budget)' "$name")"); FAILED=1
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "== $name (limit ${limit} s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local dt=$((SECONDS - t0))
    [ "$rc" -eq 124 ] && say "   $name: timed out after ${limit} s"
    say "   $name: exit $rc, ${dt} s"
    SUMMARY+=("$(printf '%-34s exit %3d %5d s' "$name" "$rc" "$dt")")
    [ "$rc" -ne 0 ] && FAILED=1
    return 0
}

# -- set-up ---------------------------------------------------------------------------------
PY="${NSE_PYTHON:-python3}"
if [ "$SETUP" -eq 1 ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
        PY=.venv/bin/python
    elif "$PY" -c "import torch" 2>/dev/null; then
        say "creating .venv on top of the machine's torch ($("$PY" -c 'import torch; print(torch.__version__)'))"
        "$PY" -m venv --system-site-packages .venv >>"$LOG" 2>&1 && PY=.venv/bin/python
    else
        say "no torch on this machine: install the torch build for its GPU first"; exit 2
    fi
    if ! "$PY" -c "import napari_shift_equivariance" 2>/dev/null; then
        say "pip install -e .[testing]"
        if ! timeout 240 "$PY" -m pip install -q -e ".[testing]" >>"$LOG" 2>&1; then
            say "pip install failed (no network?): running from src/ with the installed packages"
        fi
    fi
fi
if ! "$PY" -c "import napari_shift_equivariance" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import importlib, platform
print("python", platform.python_version(), platform.platform())
for name in ("torch", "numpy", "scipy", "sklearn", "tifffile", "zarr", "pytest",
             "napari_shift_equivariance"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')}")
    except Exception as err:  # a missing one fails only the steps that need it
        print(f"  {name} MISSING: {err}")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch cuda", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    say "device $DEVICE asked for but torch sees no CUDA GPU"; exit 2
fi

# -- sizes ----------------------------------------------------------------------------------
if [ "$TINY" -eq 1 ]; then
    P2="--size 300 --depth 2 --base-channels 4 --tiles 64,128 --repeats 1"
    P3="--ndim 3 --size 40 --depth 1 --base-channels 4 --repeats 1"
    MS="--n 2000 --large 5000 --clusters 10"
    SEG="--size 256 --scope-size 256 --n-images 1"
    TR="--quick --configs 1 --threads 1"
else
    # 4096^2 so that the GPU's default 2048 tile still tiles; 512/1024 show the arithmetic
    P2="--size 4096 --tiles 512,1024,0 --repeats 3"
    P3="--ndim 3 --size 384 --tiles 128,0 --repeats 2"
    MS="--n 20000 --large 100000,1000000 --sklearn-threads $(nproc)"
    SEG="--size 4096 --scope-size 1024 --n-images 1"
    TR=""
fi

# -- tests and benchmarks -------------------------------------------------------------------
say "device $DEVICE, python $PY, log $LOG"
step "pytest -m gpu" 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
step "predict 2D fp32" 90 "$PY" benchmarks/bench_predict.py --device "$DEVICE" $P2
step "predict 2D bf16" 90 "$PY" benchmarks/bench_predict.py --device "$DEVICE" --amp bf16 $P2
step "predict 3D fp32" 90 "$PY" benchmarks/bench_predict.py --device "$DEVICE" $P3
step "predict 3D bf16" 90 "$PY" benchmarks/bench_predict.py --device "$DEVICE" --amp bf16 $P3
step "mean-shift" 120 "$PY" benchmarks/bench_meanshift.py --device "$DEVICE" $MS
step "segment" 150 "$PY" benchmarks/bench_segment.py --device "$DEVICE" $SEG
step "train iterations/s" 90 "$PY" benchmarks/bench_train.py --device "$DEVICE" \
    --throughput-only $TR

say "== summary (device $DEVICE)"
for line in "${SUMMARY[@]}"; do say "   $line"; done
exit "$FAILED"
