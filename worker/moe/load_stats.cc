#include "worker/moe/load_stats.h"

#include <algorithm>

namespace moe {

LoadStats::LoadStats(int64_t num_layers, int64_t num_experts, int world)
    : L_(num_layers), E_(num_experts), W_(world) {
  Reset();
}

void LoadStats::Reset() {
  step_.assign(static_cast<size_t>(L_ * (E_ + W_)), 0);
  expert_total_.assign(static_cast<size_t>(L_ * E_), 0);
  rank_total_.assign(static_cast<size_t>(L_ * W_), 0);
  last_.assign(static_cast<size_t>(L_), LayerBalance{});
  sum_.assign(static_cast<size_t>(L_), LayerBalance{});
  counted_steps_.assign(static_cast<size_t>(L_), 0);
  steps_ = 0;
}

void LoadStats::AddLocal(int64_t layer, const DispatchLayout& d) {
  int64_t* row = step_.data() + layer * (E_ + W_);
  for (int dest = 0; dest < W_; ++dest) {
    for (int64_t e = 0; e < E_; ++e) row[e] += d.send_counts[dest * E_ + e];
    row[E_ + dest] += d.send_rows[dest];
  }
}

void LoadStats::AddLocalCounts(int64_t layer, std::span<const int64_t> expert_rows,
                               std::span<const int64_t> rank_rows) {
  int64_t* row = step_.data() + layer * (E_ + W_);
  for (int64_t e = 0; e < E_ && e < static_cast<int64_t>(expert_rows.size()); ++e) row[e] += expert_rows[e];
  for (int r = 0; r < W_ && r < static_cast<int>(rank_rows.size()); ++r) row[E_ + r] += rank_rows[r];
}

LayerBalance LoadStats::Balance(std::span<const int64_t> expert_load, std::span<const int64_t> rank_load) {
  LayerBalance b;
  double total = 0, sq = 0;
  for (int64_t x : expert_load) total += static_cast<double>(x);
  if (total == 0) return b;
  const double mean = total / static_cast<double>(expert_load.size());
  for (int64_t x : expert_load) sq += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
  b.expert_cv2 = sq / static_cast<double>(expert_load.size()) / (mean * mean);
  double rank_total = 0, rank_max = 0;
  for (int64_t x : rank_load) {
    rank_total += static_cast<double>(x);
    rank_max = std::max(rank_max, static_cast<double>(x));
  }
  b.imbalance = rank_max / (rank_total / static_cast<double>(rank_load.size()));
  return b;
}

void LoadStats::FinishStep(Communicator& comm) {
  comm.AllReduceSum(step_);
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t* row = step_.data() + l * (E_ + W_);
    std::span<const int64_t> experts(row, static_cast<size_t>(E_)), ranks(row + E_, static_cast<size_t>(W_));
    for (int64_t e = 0; e < E_; ++e) expert_total_[l * E_ + e] += experts[e];
    for (int r = 0; r < W_; ++r) rank_total_[l * W_ + r] += ranks[r];
    last_[l] = Balance(experts, ranks);
    if (last_[l].imbalance > 0) {
      sum_[l].imbalance += last_[l].imbalance;
      sum_[l].expert_cv2 += last_[l].expert_cv2;
      ++counted_steps_[l];
    }
  }
  std::fill(step_.begin(), step_.end(), 0);
  ++steps_;
}

LayerBalance LoadStats::mean_over_steps(int64_t layer) const {
  const int64_t n = counted_steps_[layer];
  if (n == 0) return {};
  return {sum_[layer].imbalance / static_cast<double>(n), sum_[layer].expert_cv2 / static_cast<double>(n)};
}

nlohmann::json LoadStats::ToJson() const {
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t l = 0; l < L_; ++l) {
    std::vector<int64_t> experts(expert_total_.begin() + l * E_, expert_total_.begin() + (l + 1) * E_);
    std::vector<int64_t> ranks(rank_total_.begin() + l * W_, rank_total_.begin() + (l + 1) * W_);
    const LayerBalance m = mean_over_steps(l);
    layers.push_back({{"layer", l},
                      {"expert_tokens", experts},
                      {"rank_rows", ranks},
                      {"last_step", {{"imbalance", last_[l].imbalance}, {"expert_cv2", last_[l].expert_cv2}}},
                      {"mean", {{"imbalance", m.imbalance}, {"expert_cv2", m.expert_cv2}}}});
  }
  return {{"steps", steps_}, {"world_size", W_}, {"layers", layers}};
}

}  // namespace moe
