// Random Mixtral checkpoints for any ModelConfig, under the Hugging Face Hub's tensor names, so
// tests can exercise shapes the shipped golden model does not have (other head_dim, sliding
// window, tied embeddings, few experts, several shards) and check the engine against
// testing_ref::ReferenceForward.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace moe::testing_ref {

// Writes DIR/config.json (c.ToJson()) and the weights: DIR/model.safetensors when num_shards is 1,
// else num_shards files plus model.safetensors.index.json. lm_head.weight is left out when
// c.tie_word_embeddings. `dtype` is kBF16, kF16 or kF32.
//
// Values are deterministic in (seed, tensor name) alone, so the same seed gives the same model
// whatever the shard count. Scales follow tests/data/golden/make_golden.py so activations stay
// O(1) and routing is far from uniform: linear weights N(0, 1/fan_in) (router 3x that std), norm
// weights 1 + 0.1 N(0, 1), embeddings N(0, 1). DIR is created if needed.
absl::Status WriteRandomModel(const std::string& dir, const ModelConfig& c, uint64_t seed,
                              int num_shards = 1, DType dtype = DType::kBF16);

// A fresh empty directory PREFIX + "XXXXXX" under the system temp folder ($TMPDIR, else /tmp).
// Throws std::runtime_error if it cannot be made; tests remove it themselves if they care.
std::string MakeTempDir(const std::string& prefix);

}  // namespace moe::testing_ref
