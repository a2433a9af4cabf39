// CPU kernels of the forward, float32. Shapes are row-major; W matrices are stored as in the
// checkpoint, [out_features, in_features], so a linear layer is y = x W^T.
#pragma once

#include <cstdint>
#include <span>

namespace moe::cpu {

// y[M,N] = x[M,K] * W[N,K]^T (through BLAS sgemm). `accumulate` adds to y instead of overwriting.
void Linear(const float* x, int64_t M, int64_t K, const float* W, int64_t N, float* y, bool accumulate = false);

// out[m,:] = x[m,:] / sqrt(mean(x[m,:]^2) + eps) * weight. out may alias x.
void RmsNorm(const float* x, int64_t M, int64_t H, const float* weight, double eps, float* out);

// Rotary embedding (the non-interleaved "rotate half" form) applied in place to x[T, heads, head_dim]
// at the given positions. inv_freq has head_dim/2 entries (worker/model/rope.h).
void ApplyRope(float* x, int64_t T, int64_t heads, int64_t head_dim, const int64_t* positions,
               std::span<const double> inv_freq);

// In place: gate_up holds [M, 2*I] rows (w1 x | w3 x); writes silu(w1 x) * (w3 x) into out[M, I].
void SwiGlu(const float* gate_up, int64_t M, int64_t I, float* out);

// One query row against `n_keys` key/value rows reached through `key_row(j)` / `value_row(j)`.
// scores = q.k * scale, softmax, out = sum p_j v_j. `scratch` holds n_keys floats.
template <typename KeyFn, typename ValueFn>
void AttendOne(const float* q, int64_t head_dim, int64_t n_keys, KeyFn key_row, ValueFn value_row,
               float scale, float* scratch, float* out) {
  float max_score = -3.4e38f;
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* k = key_row(j);
    float s = 0.f;
    for (int64_t d = 0; d < head_dim; ++d) s += q[d] * k[d];
    s *= scale;
    scratch[j] = s;
    max_score = s > max_score ? s : max_score;
  }
  float denom = 0.f;
  for (int64_t j = 0; j < n_keys; ++j) {
    scratch[j] = __builtin_expf(scratch[j] - max_score);
    denom += scratch[j];
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.f;
  const float inv = 1.f / denom;
  for (int64_t j = 0; j < n_keys; ++j) {
    const float p = scratch[j] * inv;
    const float* v = value_row(j);
    for (int64_t d = 0; d < head_dim; ++d) out[d] += p * v[d];
  }
}

}  // namespace moe::cpu
