// The hash chain that names a prompt prefix, one link per block of tokens: the same definition for
// the worker's prefix cache (KvBlockAllocator, one link per KV block) and the coordinator's
// placement by prefix (PrefixKeys, one link per 16 tokens).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "common/uniform_draw.h"

namespace moe {

// The hash of a prefix that ends with `tokens`, given the hash of what comes before them (0 for
// the start): FNV-1a over the parent's hash and the token ids, then SplitMix64's mix.
inline uint64_t PrefixChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = 0xcbf29ce484222325ull ^ parent;
  for (int32_t t : tokens) {
    h ^= static_cast<uint32_t>(t);
    h *= 0x100000001b3ull;
  }
  return Mix64(h);
}

// The first parent of a salted prompt's chain (vLLM's cache_salt): the salt's FNV-1a, mixed; 0, the
// chain of unsalted prompts, only for no salt. Prompts of different roots share no prefix hash.
inline uint64_t PrefixRoot(std::string_view salt) {
  if (salt.empty()) return 0;
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : salt) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  const uint64_t root = Mix64(h);
  return root != 0 ? root : 1;
}

}  // namespace moe
