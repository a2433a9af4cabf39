#include "worker/gpu/gemm_warmup.h"

#include <algorithm>
#include <vector>

#include "worker/gpu/device_buffer.h"
#include "worker/gpu/random_fill.h"

namespace moe::gpu {
namespace {

// The experts' shapes are the same in every layer: the first expert this rank holds serves (none:
// a rank without experts).
const DeviceExpertWeights* FirstHeldExpert(const DeviceWeights& w) {
  for (const DeviceMoeWeights& layer : w.moe) {
    for (const DeviceExpertWeights& e : layer.experts) {
      if (e.w13 != nullptr) return &e;
    }
  }
  return nullptr;
}

}  // namespace

int64_t PrepareGemmAlgorithms(const ModelConfig& c, const DeviceWeights& w, int64_t max_step_tokens,
                              int64_t padded_max_tokens, Gemm& gemm) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const int64_t qd = c.q_dim(), qkvd = c.q_dim() + 2 * c.kv_dim();
  constexpr int64_t kMaxLmHeadRows = 512;
  const int64_t dense_rows = std::max<int64_t>(1, max_step_tokens);
  const int64_t expert_rows = dense_rows * c.experts_per_token;
  const int64_t lm_rows = std::min(dense_rows, kMaxLmHeadRows);
  const std::vector<int64_t> dense = Gemm::RowBuckets(dense_rows), experts = Gemm::RowBuckets(expert_rows),
                             lm = Gemm::RowBuckets(lm_rows);
  const int64_t padded_rows = std::min(dense_rows, padded_max_tokens);
  const std::vector<int64_t> padded = padded_rows > 0 ? Gemm::RowBuckets(padded_rows) : std::vector<int64_t>{};
  const int64_t padded_elems = padded.empty() ? 0 : E * padded.back();  // rows of a batched call
  // Scratch: inputs up to the widest K, outputs up to the widest product of each type.
  const int64_t x_elems =
      std::max({dense.back() * std::max(H, qd), experts.back() * std::max(H, I), padded_elems * std::max(H, I)});
  const int64_t y_elems =
      std::max({dense.back() * qkvd, experts.back() * std::max(2 * I, H), padded_elems * std::max(2 * I, H)});
  const int64_t yf_elems = std::max({dense.back() * H, dense.back() * E, lm.back() * V});
  const int64_t before = Gemm::algo_counts().chosen;
  DeviceBuffer<bf16> x, y;
  DeviceBuffer<float> yf;
  try {
    x = DeviceBuffer<bf16>(static_cast<size_t>(x_elems));
    y = DeviceBuffer<bf16>(static_cast<size_t>(y_elems));
    yf = DeviceBuffer<float>(static_cast<size_t>(yf_elems));
  } catch (const CudaError&) {
    (void)cudaGetLastError();  // no room for the scratch rows: the choices are made on first use
    return -1;
  }
  FillNormal(x.get(), x_elems, 1, TensorKey("gemm warm-up rows"), 0.f, 1.f, gemm.stream());
  MOE_CUDA_CHECK(cudaMemsetAsync(yf.get(), 0, sizeof(float) * static_cast<size_t>(yf_elems), gemm.stream()));

  const DeviceAttentionWeights& a = w.attention.front();
  const DeviceMoeWeights& m = w.moe.front();
  const DeviceExpertWeights* ex = FirstHeldExpert(w);
  for (int64_t M : dense) {
    if (M <= gemm.skinny_max_rows()) continue;  // the skinny kernel's
    gemm.Linear(x.get(), M, H, a.wqkv, qkvd, y.get());
    gemm.LinearF32(x.get(), M, qd, a.wo, H, yf.get(), /*accumulate=*/true);
    gemm.LinearF32(x.get(), M, H, m.router, E, yf.get());
  }
  for (int64_t M : lm) {
    if (M > gemm.skinny_max_rows()) gemm.LinearF32(x.get(), M, H, w.lm_head, V, yf.get());
  }
  for (int64_t M : experts) {
    if (ex == nullptr) break;  // a rank without experts
    gemm.LinearBlas(x.get(), M, H, ex->w13, 2 * I, y.get());
    gemm.LinearBlas(x.get(), M, I, ex->w2, H, y.get());
  }
  const DeviceExpertWeights& first = w.moe.front().experts.front();  // the batch starts at expert 0
  const StridedBatch all{E, w.expert_stride()};
  for (int64_t M : padded) {
    if (first.w13 == nullptr) break;
    gemm.LinearBatched(x.get(), M, H, first.w13, all, 2 * I, y.get());
    gemm.LinearBatched(x.get(), M, I, first.w2, all, H, y.get());
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(gemm.stream()));
  return Gemm::algo_counts().chosen - before;
}

}  // namespace moe::gpu
