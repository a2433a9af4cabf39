// The expert placement plan: which rank(s) hold which expert of which MoE layer.
//
// The plan is computed in one place (the coordinator) and handed to the ranks as JSON, so every
// rank agrees on it without recomputing it; ranks only read it (replicas, experts_on_rank, route).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace moe {

class PlacementPlan {
 public:
  // The default plan for `num_layers` layers of `num_experts` experts over `world_size` ranks.
  // - world_size <= num_experts: each expert lives on exactly one rank. Rank shares are
  //   contiguous expert blocks whose sizes differ by at most one (8 over 3 -> 3,3,2), and the
  //   block-to-rank assignment rotates by one rank per layer. The block sizes form a balanced
  //   sequence, so over ANY number of layers the per-rank totals of expert weights differ by at
  //   most one (memory balance even when shares are uneven).
  // - world_size > num_experts: rank r holds exactly expert (r + layer) % num_experts, so the
  //   experts get replicas whose counts differ by at most one (16 over 8: two each).
  // InvalidArgument for non-positive arguments.
  static absl::StatusOr<PlacementPlan> Make(int64_t num_layers, int64_t num_experts,
                                            int world_size);

  // A plan that evens out the ranks' token load of each layer, given each expert's load
  // (`expert_load[layer][expert]`: token-slots routed to it, e.g. the expert_tokens GetStats reported
  // on an earlier run of the same model; vLLM's EPLB idea, applied once at start), for the memory of
  // Make's plan: every rank holds as many experts of each layer as there.
  // - world_size <= num_experts: the busiest rank as light as a search of the placements finds
  //   (exhaustive for Mixtral's 8 experts, about up to 12; bounded in work for larger layers).
  // - world_size > num_experts: every rank still holds one expert a layer; the replicas beyond one
  //   an expert go one at a time to the expert with the most load per replica (route() splits an
  //   expert's tokens evenly over its replicas).
  // A layer keeps Make's placement where that is as even (a layer without load, say).
  // InvalidArgument names a load that is not a finite number >= 0, or rows of unequal sizes.
  static absl::StatusOr<PlacementPlan> Balanced(const std::vector<std::vector<double>>& expert_load,
                                                int world_size);

  // The load each rank computes in `layer` under this plan: the sum, over the experts it holds, of
  // the expert's load over its replica count. expert_load has num_experts entries.
  std::vector<double> RankLoads(int64_t layer, std::span<const double> expert_load) const;
  // The busiest rank's load over the mean rank's (1: even; what the layer's step waits for, as
  // LoadStats measures it); 1 for a layer without load.
  double Imbalance(int64_t layer, std::span<const double> expert_load) const;

  int64_t num_layers() const { return num_layers_; }
  int64_t num_experts() const { return num_experts_; }
  int world_size() const { return world_size_; }

  // The ranks holding (layer, expert): ascending and non-empty.
  const std::vector<int>& replicas(int64_t layer, int64_t expert) const;
  // The experts of `layer` held by `rank`, ascending. Never empty for a plan from Make; a plan
  // from FromJson may leave a rank without experts.
  const std::vector<int64_t>& experts_on_rank(int64_t layer, int rank) const;
  bool holds(int64_t layer, int64_t expert, int rank) const;

  // The replica that serves one token routed from `src_rank` to (layer, expert). Pure and
  // deterministic, so the sender and any checker agree. `token_key` identifies the token row
  // (e.g. a running row counter of the sending rank): replicas are taken round-robin by
  // token_key, so a contiguous key range spreads over the replicas with counts differing by at
  // most one. The round-robin start is offset by a hash of src_rank, so that many senders with
  // one or two tokens each do not all pick the first replica.
  int route(int64_t layer, int64_t expert, int src_rank, uint64_t token_key) const;

  // {"num_layers":L,"num_experts":E,"world_size":W,"replicas":[[[ranks of expert 0],...] per
  // layer]}.
  nlohmann::json ToJson() const;
  // Validates everything (types, sizes, every expert has >= 1 replica, ranks in range, no rank
  // twice in one replica list); InvalidArgument names what is wrong. Replica lists may come in
  // any order; they are stored ascending.
  static absl::StatusOr<PlacementPlan> FromJson(const nlohmann::json& j);

  // A human-readable table for logs: a header, then one line per layer listing each rank's
  // experts, then the per-rank totals over all layers.
  std::string Describe() const;

  bool operator==(const PlacementPlan&) const = default;

 private:
  // Builds the rank-side index from replicas_[layer][expert] (already validated and sorted).
  PlacementPlan(int64_t num_layers, int64_t num_experts, int world_size,
                std::vector<std::vector<std::vector<int>>> replicas);

  int64_t num_layers_ = 0;
  int64_t num_experts_ = 0;
  int world_size_ = 0;
  std::vector<std::vector<std::vector<int>>> replicas_;             // [layer][expert] -> ranks
  std::vector<std::vector<std::vector<int64_t>>> experts_on_rank_;  // [layer][rank] -> experts
};

}  // namespace moe
