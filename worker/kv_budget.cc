#include "worker/kv_budget.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace moe {

int64_t KvBytesPerPosition(const ModelConfig& c) { return c.num_layers * 2 * c.kv_dim() * 2; }

int64_t RankWeightBytes(const ModelConfig& c, const PlacementPlan& plan, int rank) {
  int64_t experts = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) experts += static_cast<int64_t>(plan.experts_on_rank(l, rank).size());
  return 2 * (c.replicated_params() + experts * c.expert_params());
}

int64_t StepBufferBytes(const ModelConfig& c, int64_t step_tokens) {
  const int64_t T = std::max<int64_t>(step_tokens, 1), H = c.hidden_size, I = c.intermediate_size;
  const int64_t k = c.experts_per_token;
  // Per token, as the GPU engine's step buffers hold it for a step of one-token rows, all sampled
  // (GpuEngine::LargestStep): the float residual, its normalised bf16 copy and the LM head's bf16
  // input row; q/k/v, the queries and the attention output (bf16); per routed row its input, gate
  // and up, the SwiGLU product and the output (bf16); the router's and the LM head's float logits,
  // a penalised copy of the latter, a row of allowed-id bits; about 256 bytes of inputs and picks.
  const int64_t per_token = 8 * H + 2 * (c.q_dim() + 2 * c.kv_dim()) + 4 * c.q_dim() + 2 * k * (2 * H + 3 * I) +
                            8 * c.vocab_size + c.vocab_size / 8 + 4 * c.num_experts + 256;
  return T * per_token + kLibraryBytes;
}

absl::StatusOr<int64_t> KvTokensForMemory(const ModelConfig& c, int64_t total_bytes, double fraction,
                                          int64_t weight_bytes, int64_t buffer_bytes, int64_t block_size) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {  // written so NaN fails too
    return absl::InvalidArgumentError(absl::StrFormat("memory fraction must be in (0, 1], got %g", fraction));
  }
  if (block_size <= 0) return absl::InvalidArgumentError("KV block size must be positive");
  const double share = std::floor(fraction * static_cast<double>(total_bytes));
  const double budget = share - static_cast<double>(weight_bytes) - static_cast<double>(buffer_bytes);
  const double block_bytes = static_cast<double>(KvBytesPerPosition(c)) * static_cast<double>(block_size);
  const double blocks = budget > 0 ? std::floor(budget / block_bytes) : 0.0;
  if (blocks < 1.0) {
    constexpr double kGB = 1e9;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no GPU memory left for the KV cache: %.3g of %.1f GB is %.1f GB, of which this rank's weights take "
        "%.1f GB and its step buffers ~%.1f GB (one block of %d positions needs %.1f MB); raise the memory "
        "fraction, spread the experts over more ranks, or give the KV size",
        fraction, total_bytes / kGB, share / kGB, weight_bytes / kGB, buffer_bytes / kGB, block_size,
        block_bytes / 1e6));
  }
  return static_cast<int64_t>(blocks) * block_size;
}

}  // namespace moe
