#!/usr/bin/env bash
# Installs what is missing, builds, and runs the embedded default model (shakespeare-moe) on a
# prompt, printing the generated text as it streams.   Usage: scripts/quickstart.sh ["PROMPT"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target moe-cli
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Two expert-parallel CPU ranks: each holds half of every layer's experts.
exec mpirun --oversubscribe -np 2 "$BUILD_DIR/worker/moe-cli" generate \
  --prompt "${1:-ROMEO:}" --max-tokens "${MAX_TOKENS:-96}"
