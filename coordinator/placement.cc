#include "coordinator/placement.h"

#include <algorithm>
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
