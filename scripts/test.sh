#!/usr/bin/env bash
# Installs what is missing, builds everything (the CUDA parts too when nvcc is present) and runs
# every test: unit tests, golden tests against transformers, multi-rank mpirun jobs, the gRPC
# cluster end to end on loopback. GPU tests (label gpu) run on a machine with a GPU and skip
# without one (scripts/gpu-run.sh runs them there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
# mpirun refuses root unless told; CI and the development machines run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 900 "$@"
