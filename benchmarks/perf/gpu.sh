#!/usr/bin/env bash
# Everything robench measures on a GPU, in under 8 minutes on one GPU (benchmarks/perf/gpu.py):
# pytest -m gpu, the PGD-20 and AutoAttack ratios on resnet18-standard (1,000 images), the purifier
# throughputs, one epoch of AT and of DIR training with images/s, peak memory and FLOP utilisation.
# Writes results/perf/gpu-<device>.json and .md. Without a CUDA device it exits at once (status 2).
#
# Usage, from anywhere: benchmarks/perf/gpu.sh [extra gpu.py options, e.g. --peak-tflops 989]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
export ROBENCH_DATA=${ROBENCH_DATA:-../shared/data}
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch sees no CUDA device, so there is nothing to measure here; the CPU measurements are" \
         "benchmarks/perf/attacks.py, purifiers.py, defenses.py, dir.py and overhead.py" >&2
    exit 2
fi
exec timeout 480 "$PYTHON" benchmarks/perf/gpu.py "$@"
