// Seeded random tensors generated on the device, for the synthetic-weight mode (any config runs
// with no checkpoint). Element i of a tensor is a pure function of (seed, tensor key, i): a
// counter-based hash, no generator state, so every rank that holds a tensor gets the same values
// whatever the placement, and filling costs one pass over device memory.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/kernels.h"

namespace moe::gpu {

// out[i] = bf16(mean + std * z_i), z_i ~ N(0, 1) from Box-Muller over a hash of (seed, key, i).
void FillNormal(bf16* out, int64_t n, uint64_t seed, uint64_t key, float mean, float std, cudaStream_t s);

// The tensor key of a name (FNV-1a).
uint64_t TensorKey(const std::string& name);

}  // namespace moe::gpu
