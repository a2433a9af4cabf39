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

# The code that reads request and file input (JSON schemas, regular expressions, the JSON grammar,
# OpenAI, Responses and TGI bodies, request paths, chat templates, the tokenizer, safetensors headers,
# config.json, an --expert-load file), again under AddressSanitizer and UBSan, Debug: bad input must never corrupt memory;
# and the fuzz targets' corpora (tests/fuzz/README.md) likewise.
# SKIP_SANITIZE=1 skips it.
if [ "${SKIP_SANITIZE:-0}" != 1 ]; then
  SAN_DIR=${SAN_BUILD_DIR:-build-sanitize}
  SAN_TESTS="byte_dfa_test json_schema_test json_constraint_test openai_protocol_test responses_api_test tgi_protocol_test beam_search_test jinja_template_test tokenizer_test tokenizer_json_test safetensors_test config_test coordinator_validation_test http_metrics_test expert_load_test"
  # The fuzz targets (tests/fuzz/CMakeLists.txt's), whose tests fuzz_X_replay replay their corpora.
  SAN_FUZZ="fuzz_response_format fuzz_http_requests fuzz_grpc_requests fuzz_tokenizer fuzz_chat_template fuzz_model_files"
  cmake -S . -B "$SAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" ${CMAKE_ARGS:-}
  # shellcheck disable=SC2086  # the target list splits into words
  cmake --build "$SAN_DIR" -j "$(nproc)" --target $SAN_TESTS $SAN_FUZZ
  ctest --test-dir "$SAN_DIR" --output-on-failure --timeout 900 \
    -R "^($(echo "$SAN_TESTS" | tr ' ' '|')|fuzz_.*_replay)\$"
fi
