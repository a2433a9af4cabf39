#!/usr/bin/env bash
# Fuzzing campaigns of the input readers (tests/fuzz/README.md): builds the fuzz targets with clang,
# libFuzzer, AddressSanitizer and UBSan in build-fuzz, then runs each target named (default: all) for
# FUZZ_SECONDS (default 60) on FUZZ_JOBS processes (default 1), starting from its committed corpus.
# New inputs go to build-fuzz/corpus/<target>, crashes, leaks and timeouts to
# build-fuzz/findings/<target>/ (emptied when the target runs again). FUZZ_MERGE=1 afterwards adds
# the inputs that reach new code (edges) to the committed corpus (tests/fuzz/corpus/<target>), which
# CTest replays.
#   scripts/fuzz.sh [target ...]     e.g. FUZZ_SECONDS=600 scripts/fuzz.sh fuzz_response_format
# Exit status: 1 when any target found a crash, a leak or a timeout.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ALL=(fuzz_response_format fuzz_http_requests fuzz_grpc_requests fuzz_tokenizer fuzz_chat_template fuzz_model_files)  # tests/fuzz/CMakeLists.txt's
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
B=${FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
mkdir -p "$B"
B=$(cd "$B" && pwd)
# Optimised but with assertions (Release's flags without NDEBUG): a failed assert is a finding.
CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=OFF -DMOE_FUZZ=ON \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_C_FLAGS_RELEASE=-O2 -DCMAKE_CXX_FLAGS_RELEASE=-O2 \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" > "$B/configure.log" 2>&1 ||
  { tail -20 "$B/configure.log"; exit 2; }
cmake --build "$B" -j "$(nproc)" --target "${TARGETS[@]}" || exit 2
status=0
for t in "${TARGETS[@]}"; do
  work=$B/corpus/$t findings=$B/findings/$t seeds=$PWD/tests/fuzz/corpus/$t
  # This run's findings and job logs only (an earlier run's, mended since, would fail it again).
  rm -rf "$findings" "$B/jobs/$t"
  mkdir -p "$work" "$findings" "$B/jobs/$t"
  echo "== $t: ${SECONDS_EACH} s on $JOBS process(es)"
  # -timeout: an input that runs past 10 s is a finding (a hang); -rss_limit_mb: so is one past 4 GB.
  # (from a folder of its own: with -jobs, libFuzzer writes each job's log, fuzz-N.log, where it runs)
  (cd "$B/jobs/$t" && "$B/tests/fuzz/$t" "$work" "$seeds" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=4096 -max_len=16384 -artifact_prefix="$findings/" -jobs="$JOBS" -workers="$JOBS" \
    -print_final_stats=1 > "$B/$t.log" 2>&1)
  rc=$?
  cat "$B/$t.log" "$B/jobs/$t"/fuzz-*.log 2>/dev/null | grep -E "DONE|ERROR|SUMMARY" | head -6
  if ls "$findings"/* > /dev/null 2>&1; then
    echo "   FINDINGS: $(ls "$findings" | tr '\n' ' ')"
    status=1
  elif [ $rc -ne 0 ]; then
    echo "   exit $rc (see $B/$t.log and $B/jobs/$t)"
    status=1
  fi
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    # By edges alone (not hit counts or comparisons): a few hundred inputs a target, not thousands.
    (cd "$B/jobs/$t" && "$B/tests/fuzz/$t" -merge=1 -use_counters=0 -use_cmp=0 "$seeds" "$work" -max_len=16384 \
      -timeout=10 -rss_limit_mb=4096 > "$B/$t.merge.log" 2>&1)
    echo "   merged: $(ls "$seeds" | wc -l) inputs in tests/fuzz/corpus/$t"
  fi
done
exit $status
