#!/usr/bin/env bash
# Installs what is missing, builds, starts a cluster (the gRPC coordinator and 2 expert-parallel
# CPU worker ranks under mpirun) on the embedded default model (shakespeare-moe), sends a prompt
# through the client, prints the streamed text, and shuts the cluster down.
#   Usage: scripts/quickstart.sh ["PROMPT"]        (MAX_TOKENS=N to change the length)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target moe-coordinator moe-worker moe-client
# mpirun refuses root unless told; one BLAS thread per rank on small machines.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

log=$(mktemp)
deploy/launch-cluster.sh --np 2 --build-dir "$BUILD_DIR" --listen 127.0.0.1:0 --metrics-listen none \
  >"$log" 2>"$log.err" &
launcher=$!
stop_cluster() {
  kill -TERM "$launcher" 2>/dev/null || true
  wait "$launcher" 2>/dev/null || true
  rm -f "$log" "$log.err"
}
trap stop_cluster EXIT

address=""
for _ in $(seq 1 600); do
  address=$(sed -n 's/^launch-cluster: serving on //p' "$log")
  [ -n "$address" ] && break
  if ! kill -0 "$launcher" 2>/dev/null; then
    echo "quickstart: the cluster did not start:" >&2
    cat "$log" "$log.err" >&2
    exit 1
  fi
  sleep 0.3
done
[ -n "$address" ] || { echo "quickstart: cluster not serving after 180 s" >&2; cat "$log.err" >&2; exit 1; }

prompt=${1:-ROMEO:}
printf '%s' "$prompt"  # the client streams only the continuation
"$BUILD_DIR/clients/moe-client" --server "$address" generate \
  --prompt "$prompt" --max-tokens "${MAX_TOKENS:-96}" --temperature 0
