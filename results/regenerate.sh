#!/usr/bin/env bash
# Regenerate committed leaderboards with the commands results/README.md lists (all of them, or
# the benchmarks named as arguments). Needs the offline data or the real datasets (ROBENCH_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
benchmarks=("$@")
[ ${#benchmarks[@]} -gt 0 ] || benchmarks=(smoke preprocessing-cifar10 attacks-cifar10 eps-sweep-cifar10)
for benchmark in "${benchmarks[@]}"; do
  robench run "$benchmark" --store results/robench.sqlite --results results --no-progress
done
