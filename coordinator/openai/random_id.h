// Ids OpenAI's API makes up for what it answers (tool calls, responses): a prefix and 32 random hex
// digits, unique in practice, so ids from different requests, clients or coordinator runs never meet.
#pragma once

#include <cstdio>
#include <random>
#include <string>

namespace moe::openai {

inline std::string RandomId(const std::string& prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return prefix + hex;
}

}  // namespace moe::openai
