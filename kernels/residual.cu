// Kernels on the float32 residual stream: add a delta or the experts' weighted rows, then
// (optionally) RMSNorm into bf16. One block per token row.
//
// A decode step has one or a few rows, so these kernels are pure latency: the fast path keeps a
// row in registers (up to 8 float4 chunks per thread) and issues all of a thread's loads before
// using any, so a row costs one memory round trip per input rather than one per loop iteration
// (the loop form took 10-16 us per kernel at batch 1, measured with the kernel timeline).
//
// The norm before a MoE layer also computes the router logits of the normed row (RmsNormRouter):
// the row is in registers already, the router weights are static, so their loads go out before
// the kernel waits for the one before it, and the routing kernel that follows only picks the top-k
// (as a separate product the logits cost a second kernel its own memory round trips: 3.3 us of
// the routing kernel's 8 at batch 1, 7.5 us at batch 4, measured with trace marks).
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/reduce.cuh"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kMaxChunks = 8;     // float4 chunks of the row per thread, at most
constexpr int kMaxThreads = 512;  // 8 float4 chunks take about 128 registers a thread
constexpr int64_t kMaxFastH = 4 * kMaxChunks * kMaxThreads;

// What is added into the residual before the norm.
struct Addend {
  const float* delta = nullptr;     // [T, H] float, or
  const bf16* y = nullptr;          // rows of the experts' results, weighted:
  const int32_t* position = nullptr;  // y row of (token t, slot s) at [t * k + s]
  const float* weight = nullptr;      // [t * k + s]
  int k = 0;
  // The residual, positions and weights were written before the kernel before this one started
  // (kernels/launch.cuh): they load before the wait, and only the experts' rows after it.
  bool ready = false;
};

struct Norm {
  const bf16* weight = nullptr;  // null: no norm
  float eps = 0.f;
  bf16* out = nullptr;
};

// The router logits of the normed row (with a norm only): logits[t, e] = out[t, :] . weight[e, :]
// in float32, out being the bf16 normed row (what a separate router product would read).
struct Router {
  const bf16* weight = nullptr;  // [E, H]; null: none
  int experts = 0;
  float* logits = nullptr;       // [T, E]
};

// Router weights a thread holds at once, in experts of kChunks uint2 (2 registers each), at most 8:
// what the row's own registers leave of the 128 that 512 threads may use (about 14 a chunk: the
// row, the combine's sums and slot loads, the norm weights, the normed row). The weights are
// loaded before the PDL wait and held through the whole kernel, so with more they spill: at 8
// chunks (H over 8192) 4 experts spilled 576 bytes and 2 still 192, in the combine and norm
// launches too. Mixtral's 8 experts at H = 4096 or 6144 (4 chunks a thread) load in one round trip.
template <int kChunks>
constexpr int RouterGroup() {
  constexpr int kFree = 128 - 14 * kChunks;
  return kFree / (2 * kChunks) < 8 ? kFree / (2 * kChunks) : 8;
}

// The router weights of experts e0 .. e0 + kGroup - 1 at this thread's chunks of the row (zero past
// the experts and the row).
template <int kChunks, int kGroup>
__device__ __forceinline__ void LoadRouterGroup(const Router& router, int e0, int n4, uint2 (&rw)[kGroup][kChunks]) {
  const uint2* w = reinterpret_cast<const uint2*>(router.weight);
#pragma unroll
  for (int g = 0; g < kGroup; ++g)
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = threadIdx.x + blockDim.x * i;
      rw[g][i] = e0 + g < router.experts && c < n4 ? w[static_cast<int64_t>(e0 + g) * n4 + c] : make_uint2(0, 0);
    }
}

__device__ __forceinline__ float Dot4Bf16(const uint2& a, const uint2& b) {
  const float2 a0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a.x));
  const float2 a1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a.y));
  const float2 b0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b.x));
  const float2 b1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b.y));
  return a0.x * b0.x + a0.y * b0.y + a1.x * b1.x + a1.y * b1.y;
}

__device__ __forceinline__ float4 Bf16x4(const uint2& u) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// H % 4 == 0 and H <= 4 * kChunks * blockDim.x: chunk c = threadIdx.x + blockDim.x * i.
// With a router: dynamic shared memory of (blockDim.x / 32) * experts floats.
template <int kChunks>
__global__ void __launch_bounds__(kMaxThreads) ResidualRowKernel(float* residual, Addend add, Norm norm, Router router,
                                                                 int H) {
  constexpr int kGroup = RouterGroup<kChunks>();
  const int64_t t = blockIdx.x;
  const int n4 = H / 4;
  // The first group of router weights before the wait: static data.
  uint2 rw[kGroup][kChunks];
  if (router.weight != nullptr) LoadRouterGroup(router, 0, n4, rw);
  if (!add.ready) PdlGate();
  float4* x = reinterpret_cast<float4*>(residual + t * H);
  float4 v[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + blockDim.x * i;
    v[i] = c < n4 ? __ldcg(x + c) : make_float4(0.f, 0.f, 0.f, 0.f);  // L2: written by another kernel
  }
  // The weighted sum over the k slots in slot order, then added: as CombineAdd always did, so
  // results do not depend on which rank computed which slot. kSlots slots at a time: their weights
  // and row positions in one memory round trip (the first ones before the wait when `ready`), then
  // their rows' loads all in flight (one slot at a time cost two round trips a slot).
  constexpr int kSlots = 2;
  float w[kSlots];
  const uint2* y[kSlots];
  auto load_slots = [&](int s0) {
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      const bool ok = s0 + j < add.k;
      w[j] = ok ? __ldcg(add.weight + t * add.k + s0 + j) : 0.f;
      const int64_t row = ok ? __ldcg(add.position + t * add.k + s0 + j) : 0;
      y[j] = ok ? reinterpret_cast<const uint2*>(add.y + row * H) : nullptr;
    }
  };
  if (add.y != nullptr) load_slots(0);
  if (add.ready) PdlGate();
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
    float4 acc[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < add.k; s0 += kSlots) {
      if (s0 > 0) load_slots(s0);
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
  uint2 normed[kChunks];  // zero past the row
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + blockDim.x * i;
    normed[i] = make_uint2(0, 0);
    if (c < n4) {
      const float4 w = Bf16x4(wraw[i]);
      const __nv_bfloat162 lo = __floats2bfloat162_rn(w.x * (v[i].x * inv), w.y * (v[i].y * inv));
      const __nv_bfloat162 hi = __floats2bfloat162_rn(w.z * (v[i].z * inv), w.w * (v[i].w * inv));
      normed[i].x = *reinterpret_cast<const uint32_t*>(&lo);
      normed[i].y = *reinterpret_cast<const uint32_t*>(&hi);
      out[c] = normed[i];
    }
  }
  TraceMark(3);  // the normed row is written
  if (router.weight == nullptr) return;
  // Each thread's share of every expert's dot product, summed over the warp, then over the warps
  // in warp order (a fixed order: the logits do not depend on the other rows).
  extern __shared__ float warp_logit[];  // [warps][E]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, E = router.experts;
  for (int e0 = 0; e0 < E; e0 += kGroup) {
    if (e0 > 0) LoadRouterGroup(router, e0, n4, rw);
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < kChunks; ++i) acc += Dot4Bf16(normed[i], rw[g][i]);
      acc = WarpSum(acc);
      if (lane == 0 && e0 + g < E) warp_logit[warp * E + e0 + g] = acc;
    }
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float sum = 0.f;
    for (int i = 0; i < warps; ++i) sum += warp_logit[i * E + e];
    router.logits[t * E + e] = sum;
  }
  TraceMark(4);  // the router logits are written
}

// Any H (and unaligned rows): one element per thread and iteration.
__global__ void ResidualRowLoopKernel(float* residual, Addend add, Norm norm, Router router, int64_t H) {
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
  if (router.weight == nullptr) return;
  __syncthreads();  // the normed row, written by the block, is read back by other threads
  for (int e = 0; e < router.experts; ++e) {
    float acc = 0.f;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      acc += __bfloat162float(norm.out[t * H + h]) * __bfloat162float(router.weight[e * H + h]);
    }
    acc = BlockSum(acc);
    if (threadIdx.x == 0) router.logits[t * router.experts + e] = acc;
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void LaunchResidual(float* residual, const Addend& add, const Norm& norm, const Router& router, int64_t T, int64_t H,
                    cudaStream_t s) {
  if (T == 0) return;
  const bool fast = H % 4 == 0 && H <= kMaxFastH && Aligned(residual) && (add.delta == nullptr || Aligned(add.delta)) &&
                    (add.y == nullptr || Aligned(add.y)) && (norm.out == nullptr || Aligned(norm.out)) &&
                    (norm.weight == nullptr || Aligned(norm.weight)) &&
                    (router.weight == nullptr || Aligned(router.weight));
  if (fast) {
    // About 4 chunks per thread: enough threads that every load of the row is in flight at once;
    // the kernel holds as many chunks as the row needs (fewer registers for the router weights).
    const int64_t threads = std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (H / 16 + 31) / 32 * 32));
    const int64_t chunks = (H / 4 + threads - 1) / threads;
    const size_t shared = router.weight != nullptr ? sizeof(float) * (threads / 32) * router.experts : 0;
    auto launch = [&](auto kernel) {
      Launch(kernel, static_cast<unsigned>(T), static_cast<unsigned>(threads), shared, s, residual, add, norm, router,
             static_cast<int>(H));
    };
    if (chunks <= 1) {
      launch(ResidualRowKernel<1>);
    } else if (chunks <= 2) {
      launch(ResidualRowKernel<2>);
    } else if (chunks <= 4) {
      launch(ResidualRowKernel<4>);
    } else {
      launch(ResidualRowKernel<kMaxChunks>);
    }
  } else {
    Launch(ResidualRowLoopKernel, static_cast<unsigned>(T), 256, 0, s, residual, add, norm, router, H);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void AddRmsNorm(float* residual, const float* delta, const bf16* weight, int64_t T, int64_t H, float eps, bf16* out,
                cudaStream_t s) {
  Addend add;
  add.delta = delta;
  LaunchResidual(residual, add, Norm{weight, eps, out}, Router{}, T, H, s);
}

void RmsNormRouter(float* residual, const bf16* weight, int64_t T, int64_t H, float eps, bf16* out,
                   const bf16* router_weight, int64_t E, float* logits, cudaStream_t s) {
  if (E <= 0 || E > 256) throw std::invalid_argument("RmsNormRouter: need 0 < experts <= 256");
  LaunchResidual(residual, Addend{}, Norm{weight, eps, out}, Router{router_weight, static_cast<int>(E), logits}, T, H,
                 s);
}

void CombineAdd(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                float* residual, cudaStream_t s) {
  LaunchResidual(residual, Addend{nullptr, y, position, weight, static_cast<int>(k), true}, Norm{}, Router{}, T, H, s);
}

void CombineAddRmsNorm(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                       float* residual, const bf16* norm_weight, float eps, bf16* out, cudaStream_t s) {
  LaunchResidual(residual, Addend{nullptr, y, position, weight, static_cast<int>(k), true}, Norm{norm_weight, eps, out},
                 Router{}, T, H, s);
}

}  // namespace moe::gpu
