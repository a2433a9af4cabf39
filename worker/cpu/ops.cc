#include "worker/cpu/ops.h"

#include <cblas.h>

#include <cmath>

namespace moe::cpu {

void Linear(const float* x, int64_t M, int64_t K, const float* W, int64_t N, float* y, bool accumulate) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), 1.0f, x, static_cast<blasint>(K), W, static_cast<blasint>(K),
              accumulate ? 1.0f : 0.0f, y, static_cast<blasint>(N));
}

void RmsNorm(const float* x, int64_t M, int64_t H, const float* weight, double eps, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * H;
    float* yr = out + m * H;
    // The sum of squares in float, as transformers does in float32; mean then rsqrt.
    float ss = 0.f;
    for (int64_t h = 0; h < H; ++h) ss += xr[h] * xr[h];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(eps));
    for (int64_t h = 0; h < H; ++h) yr[h] = weight[h] * (xr[h] * inv);
  }
}

void ApplyRope(float* x, int64_t T, int64_t heads, int64_t head_dim, const int64_t* positions,
               std::span<const double> inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < T; ++t) {
    const double pos = static_cast<double>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      // The angle in double: at long contexts float32 angles lose the low frequencies' precision.
      const double angle = pos * inv_freq[i];
      const float c = static_cast<float>(std::cos(angle));
      const float s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * head_dim;
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

void SwiGlu(const float* gate_up, int64_t M, int64_t I, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* g = gate_up + m * 2 * I;
    const float* u = g + I;
    float* o = out + m * I;
    for (int64_t i = 0; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

}  // namespace moe::cpu
