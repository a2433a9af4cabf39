// Kernels on the float32 residual stream: add a delta or the experts' weighted rows, then
// (optionally) RMSNorm into bf16. One block per token row.
//
// A decode step has one or a few rows, so these kernels are pure latency: the fast path keeps a
// row in registers (up to 8 float4 chunks per thread) and issues all of a thread's loads before
// using any, so a row costs one memory round trip per input rather than one per loop iteration
// (the loop form took 10-16 us per kernel at batch 1, measured with the kernel timeline).
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/reduce.cuh"

#include <algorithm>
#include <cstdint>

namespace moe::gpu {
namespace {

constexpr int kChunks = 8;           // float4 chunks of the row per thread, at most
constexpr int kMaxThreads = 512;  // 8 float4 chunks take about 128 registers a thread
constexpr int64_t kMaxFastH = 4 * kChunks * kMaxThreads;

// What is added into the residual before the norm.
struct Addend {
  const float* delta = nullptr;     // [T, H] float, or
  const bf16* y = nullptr;          // rows of the experts' results, weighted:
  const int32_t* position = nullptr;  // y row of (token t, slot s) at [t * k + s]
  const float* weight = nullptr;      // [t * k + s]
  int k = 0;
};

struct Norm {
  const bf16* weight = nullptr;  // null: no norm
  float eps = 0.f;
  bf16* out = nullptr;
};

__device__ __forceinline__ float4 Bf16x4(const uint2& u) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// H % 4 == 0 and H <= 4 * kChunks * blockDim.x: chunk c = threadIdx.x + blockDim.x * i.
__global__ void __launch_bounds__(kMaxThreads) ResidualRowKernel(float* residual, Addend add, Norm norm, int H) {
  PdlGate();
  const int64_t t = blockIdx.x;
  const int n4 = H / 4;
  float4* x = reinterpret_cast<float4*>(residual + t * H);
  float4 v[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + blockDim.x * i;
    v[i] = c < n4 ? x[c] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const bool adds = add.delta != nullptr || add.y != nullptr;
  if (add.delta != nullptr) {
    const float4* d = reinterpret_cast<const float4*>(add.delta + t * H);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = threadIdx.x + blockDim.x * i;
      if (c < n4) {
        const float4 a = d[c];
        v[i] = make_float4(v[i].x + a.x, v[i].y + a.y, v[i].z + a.z, v[i].w + a.w);
      }
    }
  } else if (add.y != nullptr) {
    // The weighted sum over the k slots in slot order, then added: as CombineAdd always did, so
    // results do not depend on which rank computed which slot. kSlots slots at a time: their
    // weights and row positions in one memory round trip, then their rows' loads all in flight
    // (one slot at a time cost two round trips a slot).
    constexpr int kSlots = 2;
    float4 acc[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < add.k; s0 += kSlots) {
      float w[kSlots];
      const uint2* y[kSlots];
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        const bool ok = s0 + j < add.k;
        w[j] = ok ? add.weight[t * add.k + s0 + j] : 0.f;
        y[j] = ok ? reinterpret_cast<const uint2*>(add.y + static_cast<int64_t>(add.position[t * add.k + s0 + j]) * H)
                  : nullptr;
      }
      uint2 raw[kSlots][kChunks];
#pragma unroll
      for (int j = 0; j < kSlots; ++j)
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
          const int c = threadIdx.x + blockDim.x * i;
          raw[j][i] = y[j] != nullptr && c < n4 ? y[j][c] : make_uint2(0, 0);
        }
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        if (y[j] == nullptr) break;
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
          const float4 f = Bf16x4(raw[j][i]);
          const float wj = w[j];
          acc[i] = make_float4(acc[i].x + wj * f.x, acc[i].y + wj * f.y, acc[i].z + wj * f.z, acc[i].w + wj * f.w);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      v[i] = make_float4(v[i].x + acc[i].x, v[i].y + acc[i].y, v[i].z + acc[i].z, v[i].w + acc[i].w);
    }
  }
  if (adds) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = threadIdx.x + blockDim.x * i;
      if (c < n4) x[c] = v[i];
    }
  }
  TraceMark(1);  // the row and its addends are in (measurement builds)
  if (norm.weight == nullptr) return;
  uint2 wraw[kChunks];  // the norm weights' loads go out before the reduction
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + blockDim.x * i;
    wraw[i] = c < n4 ? reinterpret_cast<const uint2*>(norm.weight)[c] : make_uint2(0, 0);
    ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;  // zero past the row
  }
  const float inv = rsqrtf(BlockSum(ss) / static_cast<float>(H) + norm.eps);
  TraceMark(2);  // the norm's sum
  uint2* out = reinterpret_cast<uint2*>(norm.out + t * H);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + blockDim.x * i;
    if (c < n4) {
      const float4 w = Bf16x4(wraw[i]);
      const __nv_bfloat162 lo = __floats2bfloat162_rn(w.x * (v[i].x * inv), w.y * (v[i].y * inv));
      const __nv_bfloat162 hi = __floats2bfloat162_rn(w.z * (v[i].z * inv), w.w * (v[i].w * inv));
      uint2 o;
      o.x = *reinterpret_cast<const uint32_t*>(&lo);
      o.y = *reinterpret_cast<const uint32_t*>(&hi);
      out[c] = o;
    }
  }
  TraceMark(3);  // the normed row is written
}

// Any H (and unaligned rows): one element per thread and iteration.
__global__ void ResidualRowLoopKernel(float* residual, Addend add, Norm norm, int64_t H) {
  PdlGate();
  const int64_t t = blockIdx.x;
  float* x = residual + t * H;
  float ss = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float v = x[h];
    if (add.delta != nullptr) {
      v += add.delta[t * H + h];
    } else if (add.y != nullptr) {
      float acc = 0.f;
      for (int s = 0; s < add.k; ++s) {
        acc += add.weight[t * add.k + s] *
               __bfloat162float(add.y[static_cast<int64_t>(add.position[t * add.k + s]) * H + h]);
      }
      v += acc;
    }
    if (add.delta != nullptr || add.y != nullptr) x[h] = v;
    ss += v * v;
  }
  if (norm.weight == nullptr) return;
  const float inv = rsqrtf(BlockSum(ss) / static_cast<float>(H) + norm.eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    norm.out[t * H + h] = __float2bfloat16(__bfloat162float(norm.weight[h]) * (x[h] * inv));
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void LaunchResidual(float* residual, const Addend& add, const Norm& norm, int64_t T, int64_t H, cudaStream_t s) {
  if (T == 0) return;
  const bool fast = H % 4 == 0 && H <= kMaxFastH && Aligned(residual) && (add.delta == nullptr || Aligned(add.delta)) &&
                    (add.y == nullptr || Aligned(add.y)) && (norm.out == nullptr || Aligned(norm.out)) &&
                    (norm.weight == nullptr || Aligned(norm.weight));
  if (fast) {
    // About 4 chunks per thread: enough threads that every load of the row is in flight at once.
    const int64_t threads = std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (H / 16 + 31) / 32 * 32));
    Launch(ResidualRowKernel, static_cast<unsigned>(T), static_cast<unsigned>(threads), 0, s, residual, add, norm,
           static_cast<int>(H));
  } else {
    Launch(ResidualRowLoopKernel, static_cast<unsigned>(T), 256, 0, s, residual, add, norm, H);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void AddRmsNorm(float* residual, const float* delta, const bf16* weight, int64_t T, int64_t H, float eps, bf16* out,
                cudaStream_t s) {
  Addend add;
  add.delta = delta;
  LaunchResidual(residual, add, Norm{weight, eps, out}, T, H, s);
}

void CombineAdd(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                float* residual, cudaStream_t s) {
  LaunchResidual(residual, Addend{nullptr, y, position, weight, static_cast<int>(k)}, Norm{}, T, H, s);
}

void CombineAddRmsNorm(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                       float* residual, const bf16* norm_weight, float eps, bf16* out, cudaStream_t s) {
  LaunchResidual(residual, Addend{nullptr, y, position, weight, static_cast<int>(k)}, Norm{norm_weight, eps, out}, T,
                 H, s);
}

}  // namespace moe::gpu
