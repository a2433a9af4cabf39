#include "coordinator/placement.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

#include "absl/strings/str_join.h"

namespace moe {
namespace {

using ReplicaTable = std::vector<std::vector<std::vector<int>>>;  // [layer][expert] -> ranks

// A plan holds a vector per (layer, rank); the cap keeps a small hostile JSON from asking for an
// absurd allocation, and is far above any real expert-parallel world.
constexpr int64_t kMaxWorldSize = int64_t{1} << 20;

// First expert of block b when num_experts are cut into world_size contiguous blocks.
// ceil(b * E / W) gives sizes that differ by at most one (8 over 3 -> 3,3,2) AND form a balanced
// cyclic sequence: any run of n consecutive blocks (wrapping) holds ceil(n*E/W) - ceil(a*E/W)
// experts, i.e. floor or ceil of n*E/W. Rotating blocks over ranks layer by layer therefore keeps
// every rank's total within one of the others after any number of layers.
int64_t BlockStart(int64_t block, int64_t num_experts, int world_size) {
  return (block * num_experts + world_size - 1) / world_size;
}

// W <= E: each expert on one rank; block b goes to rank (b + layer) % W.
ReplicaTable BlockRotatedReplicas(int64_t num_layers, int64_t num_experts, int world_size) {
  ReplicaTable table(num_layers, std::vector<std::vector<int>>(num_experts));
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t shift = layer % world_size;
    for (int64_t block = 0; block < world_size; ++block) {
      const int rank = static_cast<int>((block + shift) % world_size);
      for (int64_t e = BlockStart(block, num_experts, world_size);
           e < BlockStart(block + 1, num_experts, world_size); ++e) {
        table[layer][e] = {rank};
      }
    }
  }
  return table;
}

// W > E: rank r holds exactly expert (r + layer) % E, so every rank stores one expert per layer
// and replica counts per layer are floor or ceil of W/E. Ranks are visited in ascending order,
// so each replica list comes out sorted.
ReplicaTable OneExpertPerRankReplicas(int64_t num_layers, int64_t num_experts, int world_size) {
  ReplicaTable table(num_layers, std::vector<std::vector<int>>(num_experts));
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int rank = 0; rank < world_size; ++rank) {
      table[layer][(rank + layer) % num_experts].push_back(rank);
    }
  }
  return table;
}

// SplitMix64 finaliser: a cheap, well-mixed, platform-independent hash (std::hash is neither
// guaranteed mixed nor stable across standard libraries, and all ranks must agree).
uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

absl::Status JsonError(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("placement JSON: ", what));
}

// Reads j[key] as an integer in [1, max_value].
absl::StatusOr<int64_t> ReadPositiveInt(const nlohmann::json& j, const char* key,
                                        int64_t max_value) {
  auto it = j.find(key);
  if (it == j.end()) return JsonError(absl::StrCat("missing \"", key, "\""));
  if (!it->is_number_integer()) {
    return JsonError(absl::StrCat("\"", key, "\" must be an integer, got ", it->dump()));
  }
  const bool too_large = it->is_number_unsigned()
                             ? it->get<uint64_t>() > static_cast<uint64_t>(max_value)
                             : it->get<int64_t>() > max_value;
  if (too_large || it->get<int64_t>() <= 0) {
    return JsonError(
        absl::StrCat("\"", key, "\" must be in [1, ", max_value, "], got ", it->dump()));
  }
  return it->get<int64_t>();
}

// Reads one replica list: a non-empty array of distinct ranks in [0, world_size), sorted.
absl::StatusOr<std::vector<int>> ReadReplicaList(const nlohmann::json& list, int64_t layer,
                                                 int64_t expert, int world_size) {
  const std::string where = absl::StrCat("replicas[", layer, "][", expert, "]");
  if (!list.is_array()) return JsonError(absl::StrCat(where, " must be an array of ranks"));
  if (list.empty()) {
    return JsonError(absl::StrCat(where, " is empty: expert ", expert, " of layer ", layer,
                                  " has no rank holding it"));
  }
  std::vector<int> ranks;
  ranks.reserve(list.size());
  for (const nlohmann::json& r : list) {
    const bool in_range = r.is_number_integer() &&
                          (r.is_number_unsigned() ? r.get<uint64_t>() < uint64_t(world_size)
                                                  : r.get<int64_t>() >= 0 &&
                                                        r.get<int64_t>() < world_size);
    if (!in_range) {
      return JsonError(absl::StrCat(where, " has rank ", r.dump(), " outside [0, ", world_size,
                                    ")"));
    }
    ranks.push_back(static_cast<int>(r.get<int64_t>()));
  }
  std::sort(ranks.begin(), ranks.end());
  if (auto dup = std::adjacent_find(ranks.begin(), ranks.end()); dup != ranks.end()) {
    return JsonError(absl::StrCat(where, " lists rank ", *dup, " more than once"));
  }
  return ranks;
}

// "0-2,5,7-8": experts as ascending runs, so a rank's share reads at a glance.
std::string FormatExperts(const std::vector<int64_t>& experts) {
  if (experts.empty()) return "-";
  std::vector<std::string> runs;
  for (size_t i = 0; i < experts.size();) {
    size_t j = i;
    while (j + 1 < experts.size() && experts[j + 1] == experts[j] + 1) ++j;
    runs.push_back(j == i ? absl::StrCat(experts[i]) : absl::StrCat(experts[i], "-", experts[j]));
    i = j + 1;
  }
  return absl::StrJoin(runs, ",");
}

}  // namespace

PlacementPlan::PlacementPlan(int64_t num_layers, int64_t num_experts, int world_size,
                             ReplicaTable replicas)
    : num_layers_(num_layers),
      num_experts_(num_experts),
      world_size_(world_size),
      replicas_(std::move(replicas)),
      experts_on_rank_(num_layers, std::vector<std::vector<int64_t>>(world_size)) {
  // Experts are visited in ascending order, so each rank's list comes out sorted.
  for (int64_t layer = 0; layer < num_layers_; ++layer) {
    for (int64_t expert = 0; expert < num_experts_; ++expert) {
      for (int rank : replicas_[layer][expert]) experts_on_rank_[layer][rank].push_back(expert);
    }
  }
}

absl::StatusOr<PlacementPlan> PlacementPlan::Make(int64_t num_layers, int64_t num_experts,
                                                  int world_size) {
  if (num_layers <= 0 || num_experts <= 0 || world_size <= 0 || world_size > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PlacementPlan::Make needs positive sizes (world_size at most ", kMaxWorldSize,
        "), got num_layers=", num_layers, " num_experts=", num_experts,
        " world_size=", world_size));
  }
  ReplicaTable table = world_size <= num_experts
                           ? BlockRotatedReplicas(num_layers, num_experts, world_size)
                           : OneExpertPerRankReplicas(num_layers, num_experts, world_size);
  return PlacementPlan(num_layers, num_experts, world_size, std::move(table));
}

namespace {

// The largest entry of `loads` (0 for none).
double MaxOf(const std::vector<double>& loads) {
  return loads.empty() ? 0.0 : *std::max_element(loads.begin(), loads.end());
}

// W <= E, one layer: `capacity[r]` experts to rank r (Make's counts), each expert on one rank, the
// busiest rank as light as can be. A first placement deals the experts heaviest first to the
// least-loaded rank with room; a depth-first search then looks for a lighter busiest rank (experts
// heaviest first, cut where a rank would reach the best found, ranks alike in load and room tried
// once), exhaustive for Mixtral's 8 experts; it ends early at a placement no other can beat (the
// heaviest expert, or the mean rank load, rounded up for whole counts), and after `budget` units
// of work for larger layers (a step costs about W * W / 2 comparisons of ranks, and a fixed part).
constexpr int64_t kSearchWork = 50'000'000;  // for the whole plan: a few seconds at most

std::vector<std::vector<int>> BalancedOwners(const std::vector<double>& load, const std::vector<int64_t>& capacity,
                                             int64_t budget) {
  const int64_t E = static_cast<int64_t>(load.size());
  const int W = static_cast<int>(capacity.size());
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return load[a] > load[b]; });
  std::vector<int> owner(static_cast<size_t>(E), 0);
  std::vector<double> rank_load(static_cast<size_t>(W), 0.0);
  std::vector<int64_t> held(static_cast<size_t>(W), 0);
  for (int64_t e : order) {
    int best = -1;
    for (int r = 0; r < W; ++r) {
      if (held[r] < capacity[r] && (best < 0 || rank_load[r] < rank_load[best])) best = r;
    }
    owner[e] = best;
    rank_load[best] += load[e];
    ++held[best];
  }
  double best_max = *std::max_element(rank_load.begin(), rank_load.end());
  double total = 0;
  bool whole = true;
  for (double x : load) {
    total += x;
    whole = whole && x == std::floor(x);
  }
  const double mean = total / W;
  const double bound = std::max(*std::max_element(load.begin(), load.end()), whole ? std::ceil(mean) : mean);
  std::vector<int> trial(static_cast<size_t>(E), 0);
  std::fill(rank_load.begin(), rank_load.end(), 0.0);
  std::fill(held.begin(), held.end(), 0);
  int64_t work = 0;
  std::function<void(int64_t, double)> place = [&](int64_t i, double most) {
    work += 32 + int64_t{W} * W / 2;
    if (work > budget || best_max <= bound) return;
    if (i == E) {
      best_max = most;
      owner = trial;
      return;
    }
    const int64_t e = order[i];
    for (int r = 0; r < W; ++r) {
      if (held[r] == capacity[r] || rank_load[r] + load[e] >= best_max) continue;
      bool tried_alike = false;
      for (int q = 0; q < r && !tried_alike; ++q) {
        tried_alike = rank_load[q] == rank_load[r] && held[q] == held[r] && capacity[q] == capacity[r];
      }
      if (tried_alike) continue;
      rank_load[r] += load[e];
      ++held[r];
      trial[e] = r;
      place(i + 1, std::max(most, rank_load[r]));
      rank_load[r] -= load[e];
      --held[r];
    }
  };
  place(0, 0.0);
  std::vector<std::vector<int>> replicas(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) replicas[e] = {owner[e]};
  return replicas;
}

// W > E, one layer: every rank holds one expert; replica counts start at one each and the
// W - E others go one at a time to the expert with the most load per replica (ties: the lower
// expert), which minimises the largest load per replica. Ranks are handed out in order from
// `first_rank`, so the lists come out as runs of consecutive ranks (sorted after).
std::vector<std::vector<int>> BalancedReplicas(const std::vector<double>& load, int world_size, int first_rank) {
  const int64_t E = static_cast<int64_t>(load.size());
  std::vector<int64_t> count(static_cast<size_t>(E), 1);
  for (int64_t extra = 0; extra < world_size - E; ++extra) {
    int64_t best = 0;
    for (int64_t e = 1; e < E; ++e) {
      if (load[e] / static_cast<double>(count[e]) > load[best] / static_cast<double>(count[best])) best = e;
    }
    ++count[best];
  }
  std::vector<std::vector<int>> replicas(static_cast<size_t>(E));
  int slot = 0;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t k = 0; k < count[e]; ++k) replicas[e].push_back((first_rank + slot++) % world_size);
    std::sort(replicas[e].begin(), replicas[e].end());
  }
  return replicas;
}

}  // namespace

absl::StatusOr<PlacementPlan> PlacementPlan::Balanced(const std::vector<std::vector<double>>& expert_load,
                                                      int world_size) {
  const int64_t L = static_cast<int64_t>(expert_load.size());
  const int64_t E = L > 0 ? static_cast<int64_t>(expert_load[0].size()) : 0;
  if (L == 0 || E == 0) return absl::InvalidArgumentError("expert load: no layers, or no experts in layer 0");
  for (int64_t l = 0; l < L; ++l) {
    if (static_cast<int64_t>(expert_load[l].size()) != E) {
      return absl::InvalidArgumentError(absl::StrCat("expert load: layer ", l, " has ", expert_load[l].size(),
                                                     " experts, layer 0 has ", E));
    }
    for (int64_t e = 0; e < E; ++e) {
      const double x = expert_load[l][e];
      if (!std::isfinite(x) || x < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("expert load: layer ", l, " expert ", e, ": ", x, " is not a finite number >= 0"));
      }
    }
  }
  MOE_ASSIGN_OR_RETURN(PlacementPlan even, Make(L, E, world_size));
  ReplicaTable table = even.replicas_;
  for (int64_t l = 0; l < L; ++l) {
    const std::vector<double>& load = expert_load[l];
    std::vector<std::vector<int>> candidate;
    if (world_size <= E) {
      std::vector<int64_t> capacity(static_cast<size_t>(world_size));
      for (int r = 0; r < world_size; ++r) capacity[r] = static_cast<int64_t>(even.experts_on_rank(l, r).size());
      candidate = BalancedOwners(load, capacity, std::max<int64_t>(kSearchWork / L, 100'000));
    } else {
      candidate = BalancedReplicas(load, world_size, static_cast<int>(l % world_size));
    }
    const PlacementPlan one(1, E, world_size, ReplicaTable(1, candidate));
    if (MaxOf(one.RankLoads(0, load)) < MaxOf(even.RankLoads(l, load))) table[l] = std::move(candidate);
  }
  return PlacementPlan(L, E, world_size, std::move(table));
}

std::vector<double> PlacementPlan::RankLoads(int64_t layer, std::span<const double> expert_load) const {
  MOE_CHECK(static_cast<int64_t>(expert_load.size()) == num_experts_, "expert_load has ", expert_load.size(),
            " entries for ", num_experts_, " experts");
  std::vector<double> loads(static_cast<size_t>(world_size_), 0.0);
  for (int64_t e = 0; e < num_experts_; ++e) {
    const std::vector<int>& ranks = replicas(layer, e);
    for (int r : ranks) loads[r] += expert_load[e] / static_cast<double>(ranks.size());
  }
  return loads;
}

double PlacementPlan::Imbalance(int64_t layer, std::span<const double> expert_load) const {
  const std::vector<double> loads = RankLoads(layer, expert_load);
  double total = 0;
  for (double x : loads) total += x;
  return total > 0 ? MaxOf(loads) / (total / static_cast<double>(loads.size())) : 1.0;
}

const std::vector<int>& PlacementPlan::replicas(int64_t layer, int64_t expert) const {
  MOE_CHECK(layer >= 0 && layer < num_layers_, "layer ", layer);
  MOE_CHECK(expert >= 0 && expert < num_experts_, "expert ", expert);
  return replicas_[layer][expert];
}

const std::vector<int64_t>& PlacementPlan::experts_on_rank(int64_t layer, int rank) const {
  MOE_CHECK(layer >= 0 && layer < num_layers_, "layer ", layer);
  MOE_CHECK(rank >= 0 && rank < world_size_, "rank ", rank);
  return experts_on_rank_[layer][rank];
}

bool PlacementPlan::holds(int64_t layer, int64_t expert, int rank) const {
  const std::vector<int>& ranks = replicas(layer, expert);
  return std::binary_search(ranks.begin(), ranks.end(), rank);
}

int PlacementPlan::route(int64_t layer, int64_t expert, int src_rank, uint64_t token_key) const {
  MOE_CHECK(src_rank >= 0 && src_rank < world_size_, "src_rank ", src_rank);
  const std::vector<int>& ranks = replicas(layer, expert);
  if (ranks.size() == 1) return ranks[0];
  const uint64_t n = ranks.size();
  // Reduce both terms first so the sum cannot wrap (a wrap would break the round-robin).
  const uint64_t index = (token_key % n + Mix64(static_cast<uint64_t>(src_rank)) % n) % n;
  return ranks[index];
}

nlohmann::json PlacementPlan::ToJson() const {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& experts : replicas_) layers.push_back(experts);
  return nlohmann::json{{"num_layers", num_layers_},
                        {"num_experts", num_experts_},
                        {"world_size", world_size_},
                        {"replicas", std::move(layers)}};
}

absl::StatusOr<PlacementPlan> PlacementPlan::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return JsonError("expected an object");
  const int64_t kMaxCount = std::numeric_limits<int64_t>::max();
  MOE_ASSIGN_OR_RETURN(const int64_t num_layers, ReadPositiveInt(j, "num_layers", kMaxCount));
  MOE_ASSIGN_OR_RETURN(const int64_t num_experts, ReadPositiveInt(j, "num_experts", kMaxCount));
  MOE_ASSIGN_OR_RETURN(const int64_t world_size, ReadPositiveInt(j, "world_size", kMaxWorldSize));

  auto it = j.find("replicas");
  if (it == j.end()) return JsonError("missing \"replicas\"");
  const nlohmann::json& layers = *it;
  // Sizes are checked before anything is allocated from them.
  if (!layers.is_array() || layers.size() != static_cast<uint64_t>(num_layers)) {
    return JsonError(absl::StrCat("\"replicas\" must be an array of num_layers=", num_layers,
                                  " layers, got ", layers.is_array() ? layers.size() : 0,
                                  layers.is_array() ? " entries" : " (not an array)"));
  }
  ReplicaTable table(num_layers);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const nlohmann::json& experts = layers[layer];
    if (!experts.is_array() || experts.size() != static_cast<uint64_t>(num_experts)) {
      return JsonError(absl::StrCat("replicas[", layer, "] must list num_experts=", num_experts,
                                    " experts, got ", experts.is_array() ? experts.size() : 0,
                                    experts.is_array() ? " entries" : " (not an array)"));
    }
    table[layer].reserve(num_experts);
    for (int64_t expert = 0; expert < num_experts; ++expert) {
      MOE_ASSIGN_OR_RETURN(
          std::vector<int> ranks,
          ReadReplicaList(experts[expert], layer, expert, static_cast<int>(world_size)));
      table[layer].push_back(std::move(ranks));
    }
  }
  return PlacementPlan(num_layers, num_experts, static_cast<int>(world_size), std::move(table));
}

std::string PlacementPlan::Describe() const {
  size_t min_replicas = std::numeric_limits<size_t>::max(), max_replicas = 0;
  for (const auto& experts : replicas_) {
    for (const auto& ranks : experts) {
      min_replicas = std::min(min_replicas, ranks.size());
      max_replicas = std::max(max_replicas, ranks.size());
    }
  }
  std::string out = absl::StrCat("placement: ", num_layers_, " layers x ", num_experts_,
                                 " experts over ", world_size_, " ranks, ", min_replicas);
  if (max_replicas != min_replicas) absl::StrAppend(&out, "-", max_replicas);
  absl::StrAppend(&out, " replica(s) per expert\n");

  std::vector<int64_t> totals(world_size_, 0);
  for (int64_t layer = 0; layer < num_layers_; ++layer) {
    absl::StrAppend(&out, "  layer ", layer, ":");
    for (int rank = 0; rank < world_size_; ++rank) {
      const auto& experts = experts_on_rank_[layer][rank];
      absl::StrAppend(&out, " r", rank, "{", FormatExperts(experts), "}");
      totals[rank] += static_cast<int64_t>(experts.size());
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "  experts held per rank over all layers:");
  for (int rank = 0; rank < world_size_; ++rank) {
    absl::StrAppend(&out, " r", rank, "=", totals[rank]);
  }
  absl::StrAppend(&out, "\n");
  return out;
}

}  // namespace moe
