#!/usr/bin/env bash
# The GPU half of issue 4, as one prepared run for a session that is lent a GPU machine (the `device` tool):
# CUDA bounds == CPU bounds for every method (tests/test_device.py), then the speed table on CUDA.
#
#   here:  benchmarks/device_check.sh fetch      # once: .whl/ (pure-Python packages the GPU image lacks) and
#                                                # .device/shared/ (the models and data the benchmark reads)
#   there: run(command="bash benchmarks/device_check.sh run", carry=[".whl", ".device"], timeout_s=540)
#
# `run` writes $OUT/device_tests.log and $OUT/speed_cuda.md (+ speed_cuda.log) in about 5 minutes; copy the table to
# benchmarks/results/speed_cuda.md. The GPU image has torch, onnx, onnxruntime, h5py, tabulate, tqdm and
# pytest but not onnx2torch or convex_adversarial, and ../shared does not travel with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
fetch)
    PY=${PY:-.venv/bin/python}
    SHARED=${TIGHTCERT_SHARED:-../shared}
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
    rm -rf .whl .device && mkdir -p .whl .device/shared/models .device/shared/data/cifar10
    "$PY" -m pip download -q --no-deps -d .whl onnx2torch==1.5.15
    "$PY" -m pip wheel -q --no-deps -w .whl convex-adversarial==0.4.4  # sdist only on PyPI: build it here
    for m in cifar_base_kw mnist-net_256x2; do
        mkdir -p .device/shared/models/$m
        cp "$SHARED"/models/$m/*.onnx "$SHARED"/models/$m/points.npz .device/shared/models/$m/
    done
    cp "$SHARED"/data/cifar10/cifar10_test_exact.npz .device/shared/data/cifar10/
    du -sh .whl .device
    ;;
run)
    OUT=${OUT:-out/device_check} DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script here
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" TIGHTCERT_SHARED="$PWD/.device/shared" PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; } | tee "$OUT/device_tests.log"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
        | tee -a "$OUT/device_tests.log"
    python3 -m pytest -q -p no:cacheprovider tests/test_device.py 2>&1 | tee -a "$OUT/device_tests.log"
    python3 -m benchmarks.speed --device "$DEVICE" ${SPEED_ARGS:-} --out "$OUT/speed_$DEVICE.json" 2>&1 \
        | tee "$OUT/speed_$DEVICE.log"
    ;;
*)
    echo "usage: benchmarks/device_check.sh fetch|run" >&2
    exit 2
    ;;
esac
