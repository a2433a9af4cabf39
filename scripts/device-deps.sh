#!/usr/bin/env bash
# Run on the development machine (not the GPU machine), from anywhere in the project. Downloads
# into .deps/ the Debian packages the GPU machine lacks: gRPC and abseil (through the shared
# helper, which also copies its setup.sh), plus nlohmann-json, prometheus-cpp and civetweb. The GPU
# machine unpacks every .deb there with `source .deps/setup.sh`. OpenBLAS is not carried: the GPU
# machine's image has it (0.3.26 with cblas.h), and its 12 MB of packages put the working tree and
# .deps past the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ../shared/device/fetch-deps.sh >/dev/null
(cd .deps && apt-get download -qq \
  nlohmann-json3-dev \
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 \
  libcivetweb1 libcivetweb-dev civetweb 2>&1 | grep -v 'Download is performed unsandboxed' || true)
# The shared setup.sh unpacks only when /opt/moe-deps is missing, so a warm GPU machine that
# unpacked an earlier, smaller .deps never sees packages added since: unpack each .deb once, by
# its own stamp, before the exports.
if ! grep -q "moe-deps stamps" .deps/setup.sh; then
  {
    echo '# moe-deps stamps: every carried .deb unpacked once, even on a machine that unpacked others before.'
    echo 'for _deb in "$_deps_dir"/*.deb; do'
    echo '  _stamp="/opt/moe-deps/.unpacked-$(basename "$_deb")"'
    echo '  [ -e "$_stamp" ] || { mkdir -p /opt/moe-deps && dpkg -x "$_deb" /opt/moe-deps && touch "$_stamp"; }'
    echo 'done'
  } >> .deps/setup.sh
fi
du -sh .deps
