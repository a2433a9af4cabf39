// The model's weights on one GPU, in bf16, as one rank holds them: every replicated tensor and the
// experts the placement plan gives the rank (the same ExpertFilter as LoadWeights). Two fusions
// are made at load: q/k/v stacked into one [q_dim + 2 kv_dim, H] matrix (one GEMM gives all three)
// and w1/w3 stacked into [2I, H] (one GEMM gives both halves of SwiGLU). All tensors live in one
// cudaMalloc'd arena.
//
// Two sources: a checkpoint (BF16 tensors are copied as they are, F16 and F32 converted to bf16 on
// the host), or SYNTHETIC weights filled on the device from a seed for any ModelConfig, scaled like
// tests/support/random_model.cc (linear weights N(0, 1/fan_in), the router with 3x that std, norms
// 1 + 0.1 N(0, 1), embeddings N(0, 1)), so a full-size model runs without a checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/status.h"
#include "kernels/kernels.h"
#include "worker/gpu/device_buffer.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"
#include "worker/model/weights.h"

namespace moe::gpu {

struct DeviceAttentionWeights {
  const bf16* norm = nullptr;  // input_layernorm [H]
  const bf16* wqkv = nullptr;  // q_proj, k_proj, v_proj stacked: [q_dim + 2 * kv_dim, H]
  const bf16* wo = nullptr;    // o_proj [H, q_dim]
};

struct DeviceExpertWeights {
  const bf16* w13 = nullptr;  // w1 and w3 stacked: [2I, H]
  const bf16* w2 = nullptr;   // [H, I]
};

struct DeviceMoeWeights {
  const bf16* norm = nullptr;    // post_attention_layernorm [H]
  const bf16* router = nullptr;  // gate [E, H]
  std::vector<DeviceExpertWeights> experts;  // [E]; null pointers for experts held elsewhere
  bool holds(int64_t e) const { return experts[static_cast<size_t>(e)].w13 != nullptr; }
};

class DeviceWeights {
 public:
  // Reads the tensors from the checkpoint (shapes checked against the config, values checked
  // finite as LoadWeights does; errors name the tensor and its file). `progress` is called after
  // each layer with (layers done, layers total); an error it returns ends the upload with it.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Upload(const ModelConfig& c, const Checkpoint& ckpt,
                                                               const ExpertFilter& holds,
                                                               const LoadProgress& progress = nullptr);
  // Seeded random weights, generated on the device. Tensor values depend only on (seed, tensor
  // name), so every rank holding a tensor has the same one.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Synthetic(const ModelConfig& c, const ExpertFilter& holds,
                                                                  uint64_t seed);

  const bf16* embed = nullptr;       // [V, H]
  const bf16* final_norm = nullptr;  // [H]
  const bf16* lm_head = nullptr;     // [V, H]; the embeddings when tied
  std::vector<DeviceAttentionWeights> attention;  // per layer
  std::vector<DeviceMoeWeights> moe;              // per layer

  // bf16 bytes of the tensors held (the arena adds at most 256 bytes of alignment per tensor).
  int64_t bytes() const { return bytes_; }
  int64_t expert_bytes() const { return expert_bytes_; }
  // Elements from one held expert's w13 to the next held expert's of the same layer (and w2 to
  // w2): each expert's two tensors lie together in the arena, so a layer's experts are evenly
  // spaced and one strided-batched product can take them all.
  int64_t expert_stride() const { return expert_stride_; }

 private:
  struct Part;
  struct Slot;
  DeviceWeights() = default;
  // `check`, where given: every tensor the slots name is there with their shape (GetF32Readable)
  // before the arena is allocated.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Plan(const ModelConfig& c, const ExpertFilter& holds,
                                                             std::vector<Slot>& slots,
                                                             const Checkpoint* check = nullptr);

  DeviceBuffer<bf16> arena_;
  int64_t bytes_ = 0, expert_bytes_ = 0, expert_stride_ = 0;
};

}  // namespace moe::gpu
