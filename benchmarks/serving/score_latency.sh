#!/usr/bin/env bash
# Scoring latency through the whole cluster in one command: starts a cluster with
# deploy/launch-cluster.sh, times `moe-client score-rolling` of random token ids (one call at a
# time, the client process's wall time) at each length of LENGTHS, writes one JSON, and shuts the
# cluster down. What lm-evaluation-harness's loglikelihood_rolling costs a request.
#
#   benchmarks/serving/score_latency.sh OUT.json [launch-cluster options ...]
#
# Environment (defaults in brackets):
#   LENGTHS  token counts to score ["512 2048"];  CALLS  timed calls per length [10]
#   WARMUP   untimed calls before each length's [2];  SEED  of the random ids [5]
#   BUILD    the build folder with moe-client (and, unless --build-dir says otherwise, the cluster's
#            programs) [build];  COMMIT  recorded in the JSON [git rev-parse HEAD, or unknown]
# Full-size runs without a checkpoint: a --model folder holding only config.json (and
#   tokenizer.model) with --worker-arg=--device=gpu --worker-arg=--synthetic-weights=1.
# Exit status: 0 when every call succeeded.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ $# -ge 1 ]] || { sed -n '2,16p' "$0"; exit 2; }
OUT="$1"
shift
LENGTHS="${LENGTHS:-512 2048}"
CALLS="${CALLS:-10}"
WARMUP="${WARMUP:-2}"
SEED="${SEED:-5}"
BUILD="${BUILD:-$REPO/build}"
CLIENT="$BUILD/clients/moe-client"
COMMIT="${COMMIT:-$(git -C "$REPO" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}"
[[ -x "$CLIENT" ]] || { echo "score_latency: $CLIENT is not built" >&2; exit 2; }
for n in $LENGTHS $CALLS $WARMUP $SEED; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "score_latency: expected whole numbers in LENGTHS, CALLS, WARMUP, SEED, got '$n'" >&2; exit 2; }
done
WORK="$(mktemp -d)"
source "$REPO/benchmarks/serving/cluster_lib.sh"
trap 'stop_cluster; rm -rf "$WORK"' EXIT
start_cluster "$WORK/launch.out" "$WORK/cluster.log" "$BUILD" "$@" || exit 1
echo "score_latency: cluster serving on $ADDR"
# Ids drawn from the model's own vocabulary (past the usual control ids 0-2).
"$CLIENT" --server "$ADDR" info --json > "$WORK/info.json"
VOCAB="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"]["vocab_size"])' "$WORK/info.json")"
[[ "$VOCAB" =~ ^[0-9]+$ ]] || { echo "score_latency: could not read the model's vocabulary size" >&2; exit 1; }

status=0
for n in $LENGTHS; do
  ids="$(python3 -c "import random; r = random.Random($SEED + $n); print(','.join(str(r.randrange(min(3, $VOCAB - 1), $VOCAB)) for _ in range($n)))")"
  for ((i = 0; i < WARMUP; ++i)); do "$CLIENT" --server "$ADDR" score-rolling --token-ids "$ids" --json > /dev/null || status=1; done
  for ((i = 0; i < CALLS; ++i)); do
    t0=$(date +%s%N)
    "$CLIENT" --server "$ADDR" score-rolling --token-ids "$ids" --json > "$WORK/last-$n.json" || status=1
    t1=$(date +%s%N)
    echo "$n $(( (t1 - t0) / 1000 ))" >> "$WORK/times"
  done
done
SEED="$SEED" VOCAB="$VOCAB" python3 - "$WORK" "$OUT" "$COMMIT" "$*" "$LENGTHS" <<'PY'
import json, os, statistics, sys
work, out, commit, args, lengths = sys.argv[1:]
times = {}
for line in open(os.path.join(work, "times")):
    n, us = line.split()
    times.setdefault(n, []).append(int(us) / 1000.0)
result = {"benchmark": "ScoreRolling latency through the cluster (moe-client score-rolling of random ids, one call at a time)",
          "commit": commit, "command": "benchmarks/serving/score_latency.sh OUT.json " + args, "unit": "ms",
          "ids": "random.Random(SEED + length).randrange(min(3, vocab - 1), vocab) for each position",
          "seed": int(os.environ["SEED"]), "vocab_size": int(os.environ["VOCAB"]), "lengths": {}}
info = json.load(open(os.path.join(work, "info.json")))
result["machine"] = {"client_host": os.uname().nodename,
                     "ranks": [{"host": r.get("host"), "device": r.get("device")} for r in info["cluster"].get("ranks", [])]}
result["model"] = {k: info["model"].get(k) for k in ("model_dir", "num_layers", "num_experts", "vocab_size")}
for n in lengths.split():
    if n not in times:
        continue
    path = os.path.join(work, f"last-{n}.json")
    last = json.load(open(path)) if os.path.getsize(path) > 0 else {}
    result["lengths"][n] = {"median_ms": statistics.median(times[n]), "samples_ms": times[n],
                            "sum_logprob": last.get("sum_logprob")}
json.dump(result, open(out, "w"), indent=1)
for n, r in result["lengths"].items():
    print(f"score_latency: {n} tokens: median {r['median_ms']:.1f} ms")
PY
exit $status
