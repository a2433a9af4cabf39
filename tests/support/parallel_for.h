// Runs fn(i) for i in [0, n) on the machine's cores: for the test references when they meet
// full-size shapes (a Mixtral layer's experts, its vocabulary-wide LM head), where one core would
// take minutes. Each i must write only its own outputs; the results do not depend on the threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace moe::testing_ref {

template <typename Fn>
void ParallelFor(int64_t n, Fn&& fn) {
  const int64_t threads =
      std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency())));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int64_t i = next++; i < n; i = next++) fn(i);
    });
  }
  for (std::thread& th : pool) th.join();
}

}  // namespace moe::testing_ref
