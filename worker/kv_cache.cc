#include "worker/kv_cache.h"

namespace moe {

KvCache::KvCache(const ModelConfig& c, int64_t block_size, int64_t num_blocks)
    : blocks_(block_size, num_blocks), row_(c.kv_dim()) {
  const size_t n = static_cast<size_t>(c.num_layers * num_blocks * block_size * row_);
  keys_.assign(n, 0.f);
  values_.assign(n, 0.f);
}

}  // namespace moe
