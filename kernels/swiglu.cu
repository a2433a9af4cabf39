#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

__device__ __forceinline__ float Silu(float a) { return a / (1.f + __expf(-a)); }

// One block per row; with `offsets` (the padded experts: rows in blocks of P per expert) only the
// rows an expert has, the others left as they are. kVector: 8 elements per 16-byte load and store
// (I a multiple of 8, aligned rows), a thread's loads all issued before any is used, so a row
// costs about one memory round trip (the loop form took 15-21 us for a decode batch's rows).
constexpr int kUnroll = 8;

template <bool kVector>
__global__ void SwiGluKernel(const bf16* gate_up, int64_t I, const int32_t* offsets, int64_t P, bf16* out) {
  PdlGate();
  const int64_t m = blockIdx.x;
  if (offsets != nullptr && m % P >= offsets[m / P + 1] - offsets[m / P]) return;
  const bf16* g = gate_up + m * 2 * I;
  if constexpr (kVector) {
    const int4* gv = reinterpret_cast<const int4*>(g);
    const int4* uv = reinterpret_cast<const int4*>(g + I);
    int4* ov = reinterpret_cast<int4*>(out + m * I);
    const int64_t n = I / 8;
    for (int64_t i0 = threadIdx.x; i0 < n; i0 += kUnroll * blockDim.x) {
      int4 a[kUnroll], b[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = i0 + u * blockDim.x;
        if (i < n) {
          a[u] = gv[i];
          b[u] = uv[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = i0 + u * blockDim.x;
        if (i >= n) break;
        const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a[u]);
        const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&b[u]);
        int4 r;
        __nv_bfloat162* r2 = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 x = __bfloat1622float2(a2[j]), y = __bfloat1622float2(b2[j]);
          r2[j] = __floats2bfloat162_rn(Silu(x.x) * y.x, Silu(x.y) * y.y);
        }
        ov[i] = r;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
      const float a = __bfloat162float(g[i]), b = __bfloat162float(g[I + i]);
      out[m * I + i] = __float2bfloat16(Silu(a) * b);
    }
  }
}

void LaunchSwiGlu(const bf16* gate_up, int64_t M, int64_t I, const int32_t* offsets, int64_t P, bf16* out,
                  cudaStream_t s) {
  if (M == 0) return;
  const bool aligned = I % 8 == 0 && reinterpret_cast<uintptr_t>(gate_up) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (aligned) {
    Launch(SwiGluKernel<true>, static_cast<unsigned>(M), 256, 0, s, gate_up, I, offsets, P, out);
  } else {
    Launch(SwiGluKernel<false>, static_cast<unsigned>(M), 256, 0, s, gate_up, I, offsets, P, out);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void SwiGlu(const bf16* gate_up, int64_t M, int64_t I, bf16* out, cudaStream_t s) {
  LaunchSwiGlu(gate_up, M, I, nullptr, 1, out, s);
}

void SwiGluPadded(const bf16* gate_up, const int32_t* offsets, int64_t E, int64_t P, int64_t I, bf16* out,
                  cudaStream_t s) {
  LaunchSwiGlu(gate_up, E * P, I, offsets, P, out, s);
}

}  // namespace moe::gpu
