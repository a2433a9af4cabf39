#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

__device__ __forceinline__ float Silu(float a) { return a / (1.f + __expf(-a)); }

// One block per row. kVector: 8 elements per 16-byte load and store (I a multiple of 8, aligned
// rows); the prefill's experts run it beside their GEMMs, so it should move its bytes in as few
// memory transactions as it can.
template <bool kVector>
__global__ void SwiGluKernel(const bf16* gate_up, int64_t I, bf16* out) {
  PdlGate();
  const int64_t m = blockIdx.x;
  const bf16* g = gate_up + m * 2 * I;
  if constexpr (kVector) {
    const int4* gv = reinterpret_cast<const int4*>(g);
    const int4* uv = reinterpret_cast<const int4*>(g + I);
    int4* ov = reinterpret_cast<int4*>(out + m * I);
    for (int64_t i = threadIdx.x; i < I / 8; i += blockDim.x) {
      const int4 a = gv[i], b = uv[i];
      const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
      const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&b);
      int4 r;
      __nv_bfloat162* r2 = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 x = __bfloat1622float2(a2[j]), y = __bfloat1622float2(b2[j]);
        r2[j] = __floats2bfloat162_rn(Silu(x.x) * y.x, Silu(x.y) * y.y);
      }
      ov[i] = r;
    }
  } else {
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
      const float a = __bfloat162float(g[i]), b = __bfloat162float(g[I + i]);
      out[m * I + i] = __float2bfloat16(Silu(a) * b);
    }
  }
}

}  // namespace

void SwiGlu(const bf16* gate_up, int64_t M, int64_t I, bf16* out, cudaStream_t s) {
  if (M == 0) return;
  const bool aligned = I % 8 == 0 && reinterpret_cast<uintptr_t>(gate_up) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (aligned) {
    Launch(SwiGluKernel<true>, static_cast<unsigned>(M), 256, 0, s, gate_up, I, out);
  } else {
    Launch(SwiGluKernel<false>, static_cast<unsigned>(M), 256, 0, s, gate_up, I, out);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
