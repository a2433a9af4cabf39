// Rotary position embedding's frequencies and the attention scale they imply, from config.json's
// RoPE fields, computed as transformers' ROPE_INIT_FUNCTIONS do for MixtralForCausalLM: the plain
// rotary of rope_theta, or one of the static frequency scalings of a context-extended fine-tune
// ("linear", "yarn", "llama3"), which change each frequency once for every position. YaRN's
// attention factor, which transformers multiplies into cos and sin (so into both the query and the
// key), is folded into the attention's softmax scale as its square: the same logits, and the
// cached keys stay unscaled.
#pragma once

#include <vector>

#include "worker/model/config.h"

namespace moe {

struct RopeFrequencies {
  std::vector<double> inv_freq;   // [head_dim / 2]: position p turns pair i by p * inv_freq[i]
  double attention_factor = 1.0;  // transformers' attention_scaling (cos and sin multiplied by it)
};

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& c);

// The plain rotary's frequencies: theta^(-2i / head_dim) for i < head_dim / 2.
std::vector<double> RopeInvFreq(int64_t head_dim, double theta);

// The attention's softmax scale: 1 / sqrt(head_dim), times attention_factor squared.
float AttentionScale(const ModelConfig& c);

}  // namespace moe
