// Expert and rank load, per layer. Every MoE layer adds this rank's routed rows; at the end of a
// step one all-reduce makes the step's counts global, so every rank holds the same statistics.
//
// Per step and layer: imbalance = max rank load / mean rank load (1 is perfect), and the squared
// coefficient of variation of expert load, var/mean^2 (0 is perfect): the balance measure of the
// importance loss of Shazeer et al., which Mixtral's router was trained with.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/comm/communicator.h"
#include "worker/moe/dispatch.h"

namespace moe {

struct LayerBalance {
  double imbalance = 0;  // max/mean rank load; 0 when the layer saw no rows
  double expert_cv2 = 0;
};

class LoadStats {
 public:
  LoadStats(int64_t num_layers, int64_t num_experts, int world);

  // Adds this rank's dispatch of one layer in the current step.
  void AddLocal(int64_t layer, const DispatchLayout& d);
  // The same from counts: rows this rank routed to each expert [E], and sent to each rank [W].
  void AddLocalCounts(int64_t layer, std::span<const int64_t> expert_rows, std::span<const int64_t> rank_rows);
  // Makes the step's counts global (a collective: every rank calls it once per step), then folds
  // them into the totals and the step's balance figures.
  void FinishStep(Communicator& comm);

  // Totals since start (or Reset): token-slots routed to each expert, rows computed by each rank.
  int64_t expert_tokens(int64_t layer, int64_t expert) const { return expert_total_[layer * E_ + expert]; }
  int64_t rank_rows(int64_t layer, int rank) const { return rank_total_[layer * W_ + rank]; }
  // The last step's balance per layer, and the mean over steps that routed any rows.
  const std::vector<LayerBalance>& last_step() const { return last_; }
  LayerBalance mean_over_steps(int64_t layer) const;
  int64_t steps() const { return steps_; }
  void Reset();

  nlohmann::json ToJson() const;

  static LayerBalance Balance(std::span<const int64_t> expert_load, std::span<const int64_t> rank_load);

 private:
  int64_t L_, E_;
  int W_;
  std::vector<int64_t> step_;  // [L * (E + W)]: this step's expert counts then rank counts per layer
  std::vector<int64_t> expert_total_, rank_total_;
  std::vector<LayerBalance> last_, sum_;
  std::vector<int64_t> counted_steps_;  // per layer: steps that routed rows
  int64_t steps_ = 0;
};

}  // namespace moe
