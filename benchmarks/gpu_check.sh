#!/usr/bin/env bash
# The GPU path, measured (issue 16): the CUDA tests, then screening and branch-and-bound throughput on the shipped
# MNIST pair. Run on a machine with a CUDA GPU, from the repository root; results go to $OUT (default out/gpu).
# Wheels of missing packages (highspy, for the leaf LPs of branch and bound), if any, are read from .whl/.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
python3 benchmarks/screening_throughput.py --device cuda --points 100000 --eps 0.025 0.05 0.1 \
    --batch-sizes 10000 50000 100000 --alpha-points 10000 --no-auto-lirpa --out "$OUT/screening_throughput_gpu.md"
python3 benchmarks/bab_throughput.py --device cuda --points 3 --seconds 10 --batch 256 2048 \
    --out "$OUT/bab_throughput_gpu.md"
