// RoPE's per-pair helpers on the device, shared by every kernel that rotates heads (rope.cu,
// attention.cu's QkvRopeKv, the fused decode attention), so that they give the same bits.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moe::gpu {

// RoPE's angle for position `pos` and frequency inv_freq (in double: a float angle loses the low
// frequencies at long contexts), rounded to float.
__device__ __forceinline__ void RopeAngle(int pos, double inv_freq, float& c, float& s) {
  double sn, cs;
  sincos(static_cast<double>(pos) * inv_freq, &sn, &cs);
  c = static_cast<float>(cs);
  s = static_cast<float>(sn);
}

// Rotate-half RoPE of two element pairs of a head: a holds elements (i, i + 1), b (i + half,
// i + 1 + half), as bf16x2; lo goes to i, hi to i + half. The products and sums are spelled out
// (no contraction left to the compiler) so that every kernel rotating a head gives the same bits.
__device__ __forceinline__ void RopeRotate(uint32_t a, uint32_t b, float c0, float s0, float c1, float s1,
                                           __nv_bfloat162& lo, __nv_bfloat162& hi) {
  const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a));
  const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b));
  lo = __floats2bfloat162_rn(__fmaf_rn(x.x, c0, -__fmul_rn(y.x, s0)), __fmaf_rn(x.y, c1, -__fmul_rn(y.y, s1)));
  hi = __floats2bfloat162_rn(__fmaf_rn(y.x, c0, __fmul_rn(x.x, s0)), __fmaf_rn(y.y, c1, __fmul_rn(x.y, s1)));
}

}  // namespace moe::gpu
