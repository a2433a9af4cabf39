#!/usr/bin/env bash
# Everything the GPU machine does, in one call, from anywhere in the project (the caller has run
# `source .deps/setup.sh`):
#   1. configure build-gpu with -DMOE_CUDA=ON for Hopper (sm_90);
#   2. build the GPU targets first (GPU tests, moe-bench), then everything else with all cores
#      (a failure in an unrelated target is reported but does not stop the GPU run);
#   3. run `ctest -L gpu` (verbose: the tests print their measured errors);
#   4. run moe-bench (Mixtral-8x7B, synthetic weights) -> moe-bench.json, with the CUPTI activity
#      records of one prefill and two batch-64 decode steps -> moe-bench-timeline.json
#      (GPU_RUN_BENCH=0 leaves it out);
#   5. with two GPUs or more, moe-ep-bench under mpirun, one rank per GPU (expert parallel over
#      NCCL; MOE_EP_ARGS adds flags) -> moe-ep-bench.json, and its speed-up over moe-bench at equal
#      total batches (scripts/ep-scaling.py) -> ep-scaling.json; the same with the peer exchange
#      (--exchange peer) -> moe-ep-bench-peer.json, ep-scaling-peer.json; where one GPU could not
#      hold the model (H100s), both benchmarks again on half its layers -> *-half-layers.json;
#      where Mixtral-8x22B's weights fit over the GPUs (scripts/ep-fits.py), moe-ep-bench on it too
#      -> moe-ep-bench-8x22b.json;
#   6. with GPU_RUN_PEER=1, the transformers peer (benchmarks/transformers_peer.py) at the same shape,
#      in the same call -> transformers-peer.json;
#   7. with GPU_RUN_SERVE=1, a serving sweep (benchmarks/serving/sweep.sh: moe-coordinator, one
#      moe-worker rank per GPU on synthetic Mixtral-8x7B weights, moe-serve-bench at each
#      concurrency of SERVE_SWEEP) -> serve-c*.json; with SERVE_BATCH_TOKENS="2048 8192", one sweep per
#      step token budget (moe-worker --max-batch-tokens) -> serve-t2048-c*.json, serve-t8192-c*.json;
#      where the GPUs cannot hold the whole model, on half its layers -> serve-half-layers*.json;
#   8. copy the summary, the JSON and the logs (logs.tar.gz) into $OUT when OUT is set.
# Exit status: 0 when the GPU build, every GPU test and the benchmark succeeded.
# GPU_RUN_FULL_BUILD=0 skips the build of the non-GPU targets; MOE_BENCH_ARGS adds moe-bench flags.
# GPU_RUN_TRACE=1 also builds moe-bench with kernel timelines (build-gpu-trace, -DMOE_KERNEL_TRACE=ON)
# and records decode traces (MOE_TRACE_ARGS, default batches 1 and 64) -> moe-bench-trace.json.
# MOE_COMMIT names the commit in moe-bench.json; without it `git rev-parse HEAD` is tried (the copy
# of the tree on a device machine may have no .git: then pass MOE_COMMIT=$(git rev-parse HEAD)).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
B=build-gpu
LOGS=$B/gpu-run
mkdir -p "$LOGS"
rm -f "$LOGS"/*
JOBS=$(nproc)
GPU_TARGETS=(gpu_kernels_test gpu_engine_test gpu_engine_mpi_test gpu_mixtral_test gpu_full_shape_test gpu_nccl_test e2e_gpu_cluster_test
  e2e_gpu_sampling_test
  moe-bench moe-ep-bench moe-serve-bench)
# The serving sweep starts a cluster: its programs are GPU targets too when it runs.
[ "${GPU_RUN_SERVE:-0}" = 1 ] && GPU_TARGETS+=(moe-coordinator moe-worker moe-client)
SUMMARY=$LOGS/summary.txt
status=0

# The device tool brings back a few files only: the summary and the JSON results as they are, the
# logs in one archive (tar xzf logs.tar.gz).
copy_out() {
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    for f in "$LOGS"/summary.txt "$LOGS"/*.json; do
      [ -f "$f" ] || continue
      # $OUT takes files up to 16 MiB: keep the end of anything larger.
      tail -c 15000000 "$f" > "$OUT/$(basename "$f")"
    done
    (cd "$LOGS" && tar czf "$OUT/logs.tar.gz" ./*.log 2>/dev/null)
  fi
}
trap copy_out EXIT

# step NAME CMD...: runs CMD with its output in $LOGS/NAME.log, notes the result in the summary.
step() {
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc ($((SECONDS - t0)) s)" | tee -a "$SUMMARY"
  copy_out  # after every step, so a run cut short still leaves its logs
  return $rc
}

{
  echo "host: $(hostname)  date: $(date -u +%FT%TZ)"
  echo "commit: ${MOE_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>/dev/null
} > "$SUMMARY"

if ! step configure cmake -S . -B "$B" -G Ninja -DMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release; then
  tail -n 40 "$LOGS/configure.log"
  exit 1
fi
if ! step build-gpu cmake --build "$B" --target "${GPU_TARGETS[@]}" -j "$JOBS"; then
  tail -n 60 "$LOGS/build-gpu.log"
  exit 1
fi
if [ "${GPU_RUN_FULL_BUILD:-1}" != 0 ]; then
  step build-all cmake --build "$B" -j "$JOBS" -- -k 0 || echo "   (non-GPU targets failed to build; see build-all.log)" | tee -a "$SUMMARY"
fi

step ctest-gpu ctest --test-dir "$B" -L gpu -V --timeout 900 || status=1
grep -E "tests passed|tests failed|\*\*\*|Failed|SKIPPED|Passed|\[  (FAILED|SKIPPED) " "$LOGS/ctest-gpu.log" | tail -n 60 | tee -a "$SUMMARY"

export MOE_COMMIT="${MOE_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}"
if [ "${GPU_RUN_BENCH:-1}" != 0 ]; then
  # shellcheck disable=SC2086
  step bench timeout 900 "$B/benchmarks/moe-bench" --out "$LOGS/moe-bench.json" \
    --timeline-out "$LOGS/moe-bench-timeline.json" ${MOE_BENCH_ARGS:-} || status=1
  tail -n 40 "$LOGS/bench.log" | tee -a "$SUMMARY"
fi

GPUS=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
if [ "$GPUS" -ge 2 ]; then
  # shellcheck disable=SC2086
  step ep-bench timeout 900 mpirun -np "$GPUS" --bind-to none "$B/benchmarks/moe-ep-bench" \
    --out "$LOGS/moe-ep-bench.json" ${MOE_EP_ARGS:-} || status=1
  grep -vE "^\s*$" "$LOGS/ep-bench.log" | tail -n 30 | tee -a "$SUMMARY"
  # The scaling over one GPU at equal total batches, and dispatch + combine per layer (issue #5's bar).
  [ -s "$LOGS/moe-bench.json" ] &&
    python3 scripts/ep-scaling.py "$LOGS/moe-bench.json" "$LOGS/moe-ep-bench.json" --json "$LOGS/ep-scaling.json" \
    | tee -a "$SUMMARY"
  # The same with the decode steps' rows written straight into the other GPUs (PeerExchange) instead
  # of NCCL's fixed blocks; it says so and stops where the GPUs cannot reach each other.
  # shellcheck disable=SC2086
  if step ep-bench-peer timeout 900 mpirun -np "$GPUS" --bind-to none "$B/benchmarks/moe-ep-bench" --exchange peer \
      --out "$LOGS/moe-ep-bench-peer.json" ${MOE_EP_ARGS:-}; then
    [ -s "$LOGS/moe-bench.json" ] && python3 scripts/ep-scaling.py "$LOGS/moe-bench.json" "$LOGS/moe-ep-bench-peer.json" \
      --json "$LOGS/ep-scaling-peer.json" | tee -a "$SUMMARY"
  else
    status=1
  fi
  grep -vE "^\s*$" "$LOGS/ep-bench-peer.log" | tail -n 30 | tee -a "$SUMMARY"
  # Where one GPU cannot hold the whole model (an H100's 80 GB against Mixtral-8x7B's 93 GB of bf16
  # weights), moe-bench above wrote no figures to compare with: the scaling at equal total batches
  # is then measured on half the model's layers on both sides (the peer exchange, the faster).
  if [ "${GPU_RUN_BENCH:-1}" != 0 ] && [ ! -s "$LOGS/moe-bench.json" ]; then
    HALF_CONFIG=$(mktemp --suffix=.json)
    python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["num_hidden_layers"] //= 2; json.dump(c, open(sys.argv[2], "w"))' \
      benchmarks/configs/mixtral-8x7b-v0.1.json "$HALF_CONFIG"
    if step bench-half timeout 900 "$B/benchmarks/moe-bench" --config "$HALF_CONFIG" --no-kernels --no-variants \
        --out "$LOGS/moe-bench-half-layers.json" &&
       step ep-bench-half timeout 900 mpirun -np "$GPUS" --bind-to none "$B/benchmarks/moe-ep-bench" --exchange peer \
        --config "$HALF_CONFIG" --out "$LOGS/moe-ep-bench-half-layers.json"; then
      python3 scripts/ep-scaling.py "$LOGS/moe-bench-half-layers.json" "$LOGS/moe-ep-bench-half-layers.json" \
        --json "$LOGS/ep-scaling-half-layers.json" | tee -a "$SUMMARY"
    else
      status=1
    fi
    rm -f "$HALF_CONFIG"
  fi
  # Mixtral-8x22B whole (56 layers, 281 GB of bf16 weights) where its experts spread over these
  # GPUs fit (scripts/ep-fits.py: four H200s or eight H100s).
  MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | head -n 1)
  if [ "$(python3 scripts/ep-fits.py benchmarks/configs/mixtral-8x22b-v0.1.json "$GPUS" "$MEM_MIB" 2>>"$SUMMARY")" = 1 ]; then
    # shellcheck disable=SC2086
    step ep-bench-8x22b timeout 900 mpirun -np "$GPUS" --bind-to none "$B/benchmarks/moe-ep-bench" \
      --config benchmarks/configs/mixtral-8x22b-v0.1.json --out "$LOGS/moe-ep-bench-8x22b.json" ${MOE_EP_ARGS:-} || status=1
    grep -vE "^\s*$" "$LOGS/ep-bench-8x22b.log" | tail -n 30 | tee -a "$SUMMARY"
  fi
fi

if [ "${GPU_RUN_TRACE:-0}" = 1 ]; then
  T=build-gpu-trace
  if step configure-trace cmake -S . -B "$T" -G Ninja -DMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_BUILD_TYPE=Release -DMOE_KERNEL_TRACE=ON && step build-trace cmake --build "$T" --target moe-bench -j "$JOBS"; then
    # shellcheck disable=SC2086
    step trace timeout 600 "$T/benchmarks/moe-bench" --out "$LOGS/moe-bench-trace.json" --no-kernels --no-variants \
      --profile-batches 0 ${MOE_TRACE_ARGS:---batches 1,64 --trace-batches 1,64} || status=1
    grep -E "^trace|^decode" "$LOGS/trace.log" | tee -a "$SUMMARY"
  else
    status=1
  fi
fi

if [ "${GPU_RUN_PEER:-0}" = 1 ]; then
  step peer timeout 900 env PYTHONUNBUFFERED=1 python3 benchmarks/transformers_peer.py \
    --out "$LOGS/transformers-peer.json" || status=1
  tail -n 8 "$LOGS/peer.log" | tee -a "$SUMMARY"
fi

if [ "${GPU_RUN_SERVE:-0}" = 1 ]; then
  # A model folder holding only the config: the workers build seeded random weights on their GPUs.
  SERVE_MODEL=$(mktemp -d)
  cp benchmarks/configs/mixtral-8x7b-v0.1.json "$SERVE_MODEL/config.json"
  # Where the GPUs cannot hold the whole model (one H100's 80 GB against 93 GB of bf16 weights), the
  # sweep serves half its layers, and says so in the summary and the file names (serve-half-layers*).
  SERVE_MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | head -n 1)
  serve_prefix=serve
  if [ "$(python3 scripts/ep-fits.py "$SERVE_MODEL/config.json" "$GPUS" "$SERVE_MEM_MIB" 2>>"$SUMMARY")" != 1 ]; then
    python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["num_hidden_layers"] //= 2; json.dump(c, open(sys.argv[1], "w"))' \
      "$SERVE_MODEL/config.json"
    serve_prefix=serve-half-layers
    echo "serving sweep on half the layers: the whole model does not fit these GPUs" | tee -a "$SUMMARY"
  fi
  # One sweep, or one per step token budget of SERVE_BATCH_TOKENS (moe-worker --max-batch-tokens):
  # serve-c*.json, or serve-t<budget>-c*.json.
  for T in ${SERVE_BATCH_TOKENS:-default}; do
    tag=$serve_prefix
    budget=()
    if [ "$T" != default ]; then
      tag=$serve_prefix-t$T
      budget=(--worker-arg=--max-batch-tokens="$T")
    fi
    SERVE_DIR=$LOGS/$tag
    step "$tag" timeout 900 env BUILD="$B" COMMIT="$MOE_COMMIT" SWEEP="${SERVE_SWEEP:-1:16 16:64 64:256 256:512}" \
      benchmarks/serving/sweep.sh "$SERVE_DIR" --np "$GPUS" --model "$SERVE_MODEL" --ready-timeout 600 \
      --worker-arg=--device=gpu --worker-arg=--synthetic-weights=1 "${budget[@]}" \
      --coordinator-arg=--max-running-per-rank=256 --coordinator-arg=--max-waiting=1024 || status=1
    grep -E "^==|^completed|^requests/s|^time|^inter|^end|^error" "$LOGS/$tag.log" | tee -a "$SUMMARY"
    for f in "$SERVE_DIR"/serve-c*.json; do [ -f "$f" ] && cp "$f" "$LOGS/$tag-${f##*/serve-}"; done
    cp "$SERVE_DIR/cluster.log" "$LOGS/$tag-cluster.log" 2>/dev/null
  done
fi

echo "gpu-run: exit $status" | tee -a "$SUMMARY"
exit $status
