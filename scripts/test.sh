#!/usr/bin/env bash
# Installs what is missing, builds everything (the CUDA parts too when nvcc is present) and runs
# every CPU test: unit tests, golden tests against transformers, and multi-rank mpirun jobs.
# GPU tests (label gpu) run where a GPU is present: scripts/gpu-run.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
# mpirun refuses root unless told; CI and the development machines run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$BUILD_DIR" -L cpu --output-on-failure --timeout 900 "$@"
