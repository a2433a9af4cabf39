#!/usr/bin/env bash
# Installs the Debian packages this project builds and tests with. Idempotent: when every package
# is already present it returns at once without touching apt.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc libabsl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev
  nlohmann-json3-dev
  libopenblas-dev
  prometheus-cpp-dev
  libcivetweb-dev
  python3-grpcio python3-protobuf python3-jsonschema
  openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
