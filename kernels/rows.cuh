// Row copies shared by the permutation kernels (permute.cu, exchange.cu).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace moe::gpu {

// The block's threads copy one row of H bf16: 16-byte copies when rows allow it (H a multiple of 8
// and aligned buffers).
__device__ __forceinline__ void CopyRow(const bf16* from, bf16* to, int64_t H) {
  if (H % 8 == 0) {
    const int4* f = reinterpret_cast<const int4*>(from);
    int4* d = reinterpret_cast<int4*>(to);
    for (int64_t i = threadIdx.x; i < H / 8; i += blockDim.x) d[i] = f[i];
  } else {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) to[i] = from[i];
  }
}

}  // namespace moe::gpu
