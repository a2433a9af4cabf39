// A fresh seed for a request that names none: sampled requests without a seed differ from one
// another, as in vLLM and OpenAI's API (the same seed still gives the same output).
#pragma once

#include <cstdint>
#include <mutex>
#include <random>

namespace moe {

inline uint64_t RandomSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

}  // namespace moe
