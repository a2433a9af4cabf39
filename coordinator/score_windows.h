// Rolling windows for scoring texts longer than the model context, as lm-evaluation-harness'
// loglikelihood_rolling does: disjoint prediction targets, each window filled with as much
// preceding context as fits. Every token but the first is a target exactly once.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

struct ScoreWindow {
  int64_t begin = 0;         // the window runs tokens [begin, end) through the model
  int64_t end = 0;
  int64_t first_target = 0;  // it contributes the log-probabilities of tokens [first_target, end)
};

// Windows for `num_tokens` tokens and a context of `max_len` (>= 2) tokens. The first window is
// [0, min(n, max_len)) with targets from 1; each later one ends up to max_len - 1 tokens further
// and starts max_len tokens before its end. Empty when num_tokens < 2 (nothing to score).
std::vector<ScoreWindow> RollingWindows(int64_t num_tokens, int64_t max_len);

}  // namespace moe
