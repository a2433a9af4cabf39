#!/usr/bin/env bash
# Run on the development machine (not the GPU machine), from anywhere in the project. Downloads
# into .deps/ the Debian packages the GPU machine lacks: gRPC and abseil (through the shared
# helper, which also copies its setup.sh), plus SentencePiece, OpenBLAS, nlohmann-json and
# prometheus-cpp. The GPU machine unpacks every .deb there with `source .deps/setup.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ../shared/device/fetch-deps.sh >/dev/null
(cd .deps && apt-get download -qq \
  libsentencepiece-dev libsentencepiece0 \
  libopenblas-dev libopenblas-pthread-dev libopenblas0 libopenblas0-pthread libgfortran5 \
  nlohmann-json3-dev \
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 \
  libcivetweb1 libcivetweb-dev civetweb 2>&1 | grep -v 'Download is performed unsandboxed' || true)
du -sh .deps
