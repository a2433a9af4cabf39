// How many KV cache positions fit in a device's memory: a rank may take a fraction of the device's
// memory (moe-worker --gpu-memory-utilization, as vLLM's: weights, step buffers and the KV cache
// together; ranks sharing a GPU split it), and the KV cache gets what the rank's weights and an
// estimate of its step buffers leave. Plain arithmetic, so the rule is tested without a GPU; the GPU
// engine applies it with the device's memory (cudaMemGetInfo) before it allocates anything.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "coordinator/placement.h"
#include "worker/model/config.h"

namespace moe {

// Bytes of one position of the KV cache: keys and values of every layer, bf16.
int64_t KvBytesPerPosition(const ModelConfig& c);

// Bytes of the bf16 weights `rank` holds under `plan`: the replicated part and its experts.
int64_t RankWeightBytes(const ModelConfig& c, const PlacementPlan& plan, int rank);

// An upper estimate of what a step of up to `step_tokens` tokens allocates besides the weights and
// the KV cache (residual stream, attention and expert buffers, float logits for every row and a
// penalised copy), plus a fixed 1 GiB for the libraries (cuBLAS workspaces, CUDA graphs, NCCL
// buffers: kLibraryBytes). The GPU engine allocates these buffers at load (GpuEngine::ReserveSteps;
// its test checks that they stay under this estimate less kLibraryBytes).
int64_t StepBufferBytes(const ModelConfig& c, int64_t step_tokens);
inline constexpr int64_t kLibraryBytes = int64_t{1} << 30;

// The KV positions, whole blocks of `block_size`, that fit in fraction * total_bytes - weights -
// buffers. ResourceExhausted, with every figure in the message, when not one block fits;
// InvalidArgument for a fraction outside (0, 1].
absl::StatusOr<int64_t> KvTokensForMemory(const ModelConfig& c, int64_t total_bytes, double fraction,
                                          int64_t weight_bytes, int64_t buffer_bytes, int64_t block_size);

}  // namespace moe
