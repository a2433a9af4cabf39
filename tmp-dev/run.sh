#!/usr/bin/env bash
# One device call: build, the touched GPU tests, the EP rank experts figure.
set -uo pipefail
source .deps/setup.sh
C=$(cat tmp-dev/commit)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
t0=$SECONDS
cmake -S . -B build-gpu -G Ninja -DMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release > $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; exit 1; }
cmake --build build-gpu --target gpu_engine_mpi_test gpu_engine_test moe-bench -j16 > $OUT/build.log 2>&1 || { grep -B2 -A10 "error" $OUT/build.log | head -60; exit 1; }
echo "build $((SECONDS-t0)) s"
(cd build-gpu && ctest -R "gpu_engine_mpi_test|gpu_engine_test" --output-on-failure -V) > $OUT/ctest.log 2>&1
echo "ctest rc $? $((SECONDS-t0)) s"
grep -E "Test #|wgmma|replayed|FAILED|Passed|Failed" $OUT/ctest.log | head -40
timeout 300 build-gpu/benchmarks/moe-bench --kernels-only --kernel-figures ep_rank_experts --commit $C --out $OUT/ep-rank-experts.json > $OUT/ep-rank-experts.log 2>&1
echo "bench rc $? $((SECONDS-t0)) s"
cat $OUT/ep-rank-experts.log | tail -40
