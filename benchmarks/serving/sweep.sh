#!/usr/bin/env bash
# A serving sweep in one command: starts a cluster with deploy/launch-cluster.sh, runs
# moe-serve-bench at each concurrency of SWEEP (every point warmed up first), writes one JSON per
# point into OUT_DIR, and shuts the cluster down.
#
#   benchmarks/serving/sweep.sh OUT_DIR [launch-cluster options ...]
#
# Environment (defaults in brackets):
#   SWEEP        "CONCURRENCY:REQUESTS ..." points ["1:16 16:64 64:256 256:512"]
#   INPUT_LEN    prompt tokens [128];  OUTPUT_LEN  generated tokens [128];  RATE  requests/s [inf]
#   RANGE_RATIO  lengths uniform in [len * (1 - r), len * (1 + r)] [0]
#   WARMUP       requests run before each point's measured ones [the point's concurrency]
#   SHARED_PREFIX_LEN  tokens every prompt starts with, before its own INPUT_LEN [0]
#   JSON_OBJECT  non-empty: every request asks for response_format json_object (moe-serve-bench --json-object)
#   REGEX        non-empty: every request asks for guided_regex REGEX (moe-serve-bench --regex)
#   GRAMMAR      non-empty: every request asks for guided_grammar GRAMMAR (GBNF; moe-serve-bench --grammar)
#   REPETITION_PENALTY, FREQUENCY_PENALTY, LOGPROBS  every request's (moe-serve-bench's flags) [off]
#   MAX_TOKENS   above OUTPUT_LEN: every request asks for max_tokens MAX_TOKENS and the client ends it
#                after OUTPUT_LEN tokens (moe-serve-bench --max-tokens) [0: off]
#   BUILD        the build folder with moe-serve-bench (and, unless --build-dir says otherwise, the
#                cluster's programs) [build]
#   COMMIT       recorded in the JSON [git rev-parse HEAD, or unknown]
#   SEED         the first point's moe-serve-bench --seed, the next points' SEED + 1, + 2, ... [0]:
#                each point's prompts are its own, so no point finds another's in the prefix cache
# Full-size runs without a checkpoint: a --model folder holding only config.json and
#   --worker-arg=--device=gpu --worker-arg=--synthetic-weights=1 (see scripts/gpu-run.sh).
# Exit status: 0 when every point's requests all completed.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ $# -ge 1 ]] || { sed -n '2,24p' "$0"; exit 2; }
OUT_DIR="$1"
shift
mkdir -p "$OUT_DIR" || exit 2
SWEEP="${SWEEP:-1:16 16:64 64:256 256:512}"
BUILD="${BUILD:-$REPO/build}"
BENCH="$BUILD/benchmarks/serving/moe-serve-bench"
COMMIT="${COMMIT:-$(git -C "$REPO" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}"
[[ -x "$BENCH" ]] || { echo "sweep: $BENCH is not built" >&2; exit 2; }
for point in $SWEEP; do
  [[ "$point" =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || { echo "sweep: SWEEP: expected CONCURRENCY:REQUESTS, got '$point'" >&2; exit 2; }
done

source "$REPO/benchmarks/serving/cluster_lib.sh"
trap stop_cluster EXIT
start_cluster "$OUT_DIR/launch-cluster.out" "$OUT_DIR/cluster.log" "$BUILD" "$@" || exit 1
echo "sweep: cluster serving on $ADDR"

status=0
seed="${SEED:-0}"
for point in $SWEEP; do
  c="${point%%:*}"
  n="${point##*:}"
  echo "== concurrency $c, $n requests of ${INPUT_LEN:-128} + ${OUTPUT_LEN:-128} tokens"
  "$BENCH" --server "$ADDR" --requests "$n" --max-concurrency "$c" --warmup "${WARMUP:-$c}" --rate "${RATE:-inf}" \
    --input-len "${INPUT_LEN:-128}" --output-len "${OUTPUT_LEN:-128}" --range-ratio "${RANGE_RATIO:-0}" \
    --shared-prefix-len "${SHARED_PREFIX_LEN:-0}" --seed "$seed" --connections 8 --commit "$COMMIT" ${JSON_OBJECT:+--json-object} ${REGEX:+--regex "$REGEX"} ${GRAMMAR:+--grammar "$GRAMMAR"} ${REPETITION_PENALTY:+--repetition-penalty "$REPETITION_PENALTY"} ${FREQUENCY_PENALTY:+--frequency-penalty "$FREQUENCY_PENALTY"} ${LOGPROBS:+--logprobs "$LOGPROBS"} --max-tokens "${MAX_TOKENS:-0}" \
    --out "$OUT_DIR/serve-c$c.json" || status=1
  seed=$((seed + 1))
done
exit $status
