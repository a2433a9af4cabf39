#include "coordinator/score_windows.h"

#include <algorithm>

namespace moe {

std::vector<ScoreWindow> RollingWindows(int64_t num_tokens, int64_t max_len) {
  std::vector<ScoreWindow> windows;
  if (num_tokens < 2 || max_len < 2) return windows;
  int64_t predicted = std::min(num_tokens, max_len);
  windows.push_back({0, predicted, 1});
  while (predicted < num_tokens) {
    const int64_t end = std::min(num_tokens, predicted + max_len - 1);
    windows.push_back({end - max_len, end, predicted});
    predicted = end;
  }
  return windows;
}

}  // namespace moe
