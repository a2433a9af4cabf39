// The model's weights in float32, as one rank holds them: every replicated tensor (embeddings,
// attention, norms, routers, LM head) and only the experts the placement gives this rank.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace moe {

struct AttentionWeights {
  std::vector<float> norm;  // input_layernorm [H]
  std::vector<float> wq;    // [q_dim, H]
  std::vector<float> wk;    // [kv_dim, H]
  std::vector<float> wv;    // [kv_dim, H]
  std::vector<float> wo;    // [H, q_dim]
};

struct ExpertWeights {
  std::vector<float> w13;  // w1 and w3 stacked: [2*I, H], so one GEMM gives both halves of SwiGLU
  std::vector<float> w2;   // [H, I]
};

struct MoeWeights {
  std::vector<float> norm;    // post_attention_layernorm [H]
  std::vector<float> router;  // gate [E, H]
  std::map<int64_t, ExpertWeights> experts;  // expert id -> weights, only those held here
};

struct ModelWeights {
  std::vector<float> embed;       // [V, H]
  std::vector<float> final_norm;  // [H]
  std::vector<float> lm_head;     // [V, H]; empty when tied to the embeddings
  std::vector<AttentionWeights> attention;  // per layer
  std::vector<MoeWeights> moe;              // per layer

  const float* lm_head_data() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  int64_t bytes() const;
};

// Which experts a rank loads: holds(layer, expert).
using ExpertFilter = std::function<bool(int64_t layer, int64_t expert)>;

// One checkpoint tensor: its Hub name (e.g. model.layers.3.block_sparse_moe.experts.5.w1.weight)
// and the shape config.json gives it.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// The tensors of a MixtralForCausalLM of config `c`, in one place for the host loader, the GPU
// loader and CheckCheckpointHoldsOnlyTheModel.
struct ModelTensorSpecs {  // outside the layers
  TensorSpec embed;       // model.embed_tokens.weight [V, H]
  TensorSpec final_norm;  // model.norm.weight [H]
  TensorSpec lm_head;     // lm_head.weight [V, H] (read unless the embeddings are tied)
};
struct LayerTensorSpecs {  // a layer's replicated tensors
  TensorSpec input_norm, q, k, v, o;  // input_layernorm, self_attn.{q,k,v,o}_proj
  TensorSpec post_norm, router;       // post_attention_layernorm, block_sparse_moe.gate
};
struct ExpertTensorSpecs {  // one expert of a layer: w1 and w3 [I, H] (gate and up), w2 [H, I]
  TensorSpec w1, w3, w2;
};
ModelTensorSpecs ModelTensors(const ModelConfig& c);
LayerTensorSpecs LayerTensors(const ModelConfig& c, int64_t layer);
ExpertTensorSpecs ExpertTensors(const ModelConfig& c, int64_t layer, int64_t expert);

// The error for a weight that holds a value that is not finite (a damaged or wrongly converted
// checkpoint: served, it would turn every answer it touches into NaN): names the tensor, its file,
// the value and its position (row and column for a matrix), the first such value in memory order.
absl::Status NonFiniteWeightError(const std::string& name, const std::string& file,
                                  std::span<const int64_t> shape, int64_t index, float value);

// Every tensor of the checkpoint is one a MixtralForCausalLM of config `c` has (lm_head.weight also
// beside tied embeddings, and old checkpoints' rotary_emb.inv_freq buffers, which vLLM skips too):
// a checkpoint of more layers or experts than config.json says, or of another architecture, is
// refused naming a tensor it does not expect, where it would serve a truncated model silently.
absl::Status CheckCheckpointHoldsOnlyTheModel(const ModelConfig& c, const Checkpoint& ckpt);

// Loads and checks every needed tensor's shape against the config, and that every value is finite
// (NonFiniteWeightError). Errors name the tensor.
// `progress`, when given, is called after each layer with (layers done, layers total); an error it
// returns ends the load with that error (a worker rank whose job ended while it loads stops there).
using LoadProgress = std::function<absl::Status(int64_t done, int64_t total)>;
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const Checkpoint& ckpt, const ExpertFilter& holds,
                                         const LoadProgress& progress = nullptr);

}  // namespace moe
