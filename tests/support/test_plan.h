// The placement plan the multi-rank engine tests shard the experts by: Make's, or with
// MOE_TEST_PLAN=balanced in the environment (CTest's *_balanced variants) PlacementPlan::Balanced's
// for a skewed load made up here, which groups experts out of order and unevenly by layer, so that
// the engines are checked on a plan of the kind moe-coordinator --expert-load hands out.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/placement.h"

namespace moe::testing_ref {

// Throws for another MOE_TEST_PLAN, and when the balanced plan comes out as Make's (a variant that
// would test nothing).
inline PlacementPlan TestPlan(int64_t num_layers, int64_t num_experts, int world_size) {
  PlacementPlan even = ValueOrThrow(PlacementPlan::Make(num_layers, num_experts, world_size));
  const char* which = std::getenv("MOE_TEST_PLAN");
  if (which == nullptr) return even;
  if (std::string(which) != "balanced") throw std::runtime_error(std::string("MOE_TEST_PLAN=") + which + ": only balanced");
  std::vector<std::vector<double>> load(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    for (int64_t e = 0; e < num_experts; ++e) {
      const double x = static_cast<double>((e * 5 + l * 3) % num_experts + 1);
      load[l].push_back(x * x);
    }
  }
  PlacementPlan balanced = ValueOrThrow(PlacementPlan::Balanced(load, world_size));
  if (world_size > 1 && balanced == even) throw std::runtime_error("MOE_TEST_PLAN=balanced: the plan is Make's");
  return balanced;
}

}  // namespace moe::testing_ref
