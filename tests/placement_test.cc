// PlacementPlan: every expert placed, memory balanced across ranks (per layer and over layers),
// replicas balanced when there are more ranks than experts, route() deterministic and even, and
// the JSON hand-off validated.
#include "coordinator/placement.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace moe {
namespace {

struct Shape {
  int64_t layers;
  int64_t experts;
  int world;
};

std::string Name(const Shape& s) {
  return "L" + std::to_string(s.layers) + "_E" + std::to_string(s.experts) + "_W" +
         std::to_string(s.world);
}

std::vector<Shape> AllShapes() {
  std::vector<Shape> shapes;
  for (int64_t layers : {1, 4, 32}) {
    for (int world : {1, 2, 3, 4, 5, 6, 8, 16, 12}) shapes.push_back({layers, 8, world});
    for (int world : {1, 2, 3, 4, 5, 8}) shapes.push_back({layers, 4, world});
    for (int world : {1, 3, 5, 7, 16, 24, 32}) shapes.push_back({layers, 16, world});
  }
  return shapes;
}

PlacementPlan MakeOrDie(const Shape& s) {
  absl::StatusOr<PlacementPlan> plan = PlacementPlan::Make(s.layers, s.experts, s.world);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *std::move(plan);
}

int64_t Spread(const std::vector<int64_t>& v) {
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return *hi - *lo;
}

class PlacementShapeTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PlacementShapeTest, EveryExpertPlacedAndIndexesAgree) {
  const Shape s = GetParam();
  const PlacementPlan plan = MakeOrDie(s);
  ASSERT_EQ(plan.num_layers(), s.layers);
  ASSERT_EQ(plan.num_experts(), s.experts);
  ASSERT_EQ(plan.world_size(), s.world);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int64_t e = 0; e < s.experts; ++e) {
      const std::vector<int>& ranks = plan.replicas(l, e);
      ASSERT_FALSE(ranks.empty()) << "layer " << l << " expert " << e;
      EXPECT_TRUE(std::adjacent_find(ranks.begin(), ranks.end(), std::greater_equal<int>()) ==
                  ranks.end())
          << "replicas not strictly ascending, layer " << l << " expert " << e;
      for (int r : ranks) {
        ASSERT_GE(r, 0);
        ASSERT_LT(r, s.world);
      }
      for (int r = 0; r < s.world; ++r) {
        const bool listed = std::find(ranks.begin(), ranks.end(), r) != ranks.end();
        const auto& on_rank = plan.experts_on_rank(l, r);
        const bool indexed = std::find(on_rank.begin(), on_rank.end(), e) != on_rank.end();
        EXPECT_EQ(plan.holds(l, e, r), listed);
        EXPECT_EQ(indexed, listed) << "layer " << l << " expert " << e << " rank " << r;
      }
    }
    for (int r = 0; r < s.world; ++r) {
      const auto& on_rank = plan.experts_on_rank(l, r);
      EXPECT_FALSE(on_rank.empty()) << "layer " << l << " rank " << r;
      EXPECT_TRUE(std::is_sorted(on_rank.begin(), on_rank.end()));
    }
  }
}

TEST_P(PlacementShapeTest, MemoryBalancedPerLayerAndOverLayers) {
  const Shape s = GetParam();
  const PlacementPlan plan = MakeOrDie(s);
  std::vector<int64_t> totals(s.world, 0);
  for (int64_t l = 0; l < s.layers; ++l) {
    std::vector<int64_t> shares(s.world);
    for (int r = 0; r < s.world; ++r) shares[r] = plan.experts_on_rank(l, r).size();
    if (s.world <= s.experts) {
      EXPECT_LE(Spread(shares), 1) << "layer " << l;
      for (int r = 0; r < s.world; ++r) {
        // A rank's share is one contiguous block of experts.
        const auto& on_rank = plan.experts_on_rank(l, r);
        EXPECT_EQ(on_rank.back() - on_rank.front() + 1, static_cast<int64_t>(on_rank.size()))
            << "layer " << l << " rank " << r;
      }
    } else {
      for (int r = 0; r < s.world; ++r) EXPECT_EQ(shares[r], 1) << "layer " << l << " rank " << r;
    }
    for (int r = 0; r < s.world; ++r) totals[r] += shares[r];
    // The rotation keeps totals within one of each other after every prefix of layers, not
    // just after a full cycle of world_size layers.
    if (s.world <= s.experts) {
      EXPECT_LE(Spread(totals), 1) << "after " << l + 1 << " layers";
    }
  }
  // Totals add up to every expert weight stored once per replica.
  int64_t stored = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int64_t e = 0; e < s.experts; ++e) stored += plan.replicas(l, e).size();
  }
  int64_t sum = 0;
  for (int64_t t : totals) sum += t;
  EXPECT_EQ(sum, stored);
}

TEST_P(PlacementShapeTest, ReplicaCounts) {
  const Shape s = GetParam();
  const PlacementPlan plan = MakeOrDie(s);
  for (int64_t l = 0; l < s.layers; ++l) {
    std::vector<int64_t> counts(s.experts);
    for (int64_t e = 0; e < s.experts; ++e) counts[e] = plan.replicas(l, e).size();
    if (s.world <= s.experts) {
      for (int64_t e = 0; e < s.experts; ++e) EXPECT_EQ(counts[e], 1) << "layer " << l;
    } else {
      EXPECT_LE(Spread(counts), 1) << "layer " << l;
      EXPECT_EQ(*std::min_element(counts.begin(), counts.end()), s.world / s.experts);
    }
  }
}

TEST_P(PlacementShapeTest, RouteReturnsAReplicaAndSpreadsEvenly) {
  const Shape s = GetParam();
  const PlacementPlan plan = MakeOrDie(s);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int64_t e = 0; e < s.experts; ++e) {
      const std::vector<int>& ranks = plan.replicas(l, e);
      for (int src = 0; src < s.world; ++src) {
        // Any contiguous key range, wherever it starts, is spread round-robin.
        for (uint64_t first : {uint64_t{0}, uint64_t{37}, ~uint64_t{0} - 50}) {
          for (uint64_t len : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{50}}) {
            std::map<int, int64_t> hits;
            for (int r : ranks) hits[r] = 0;
            for (uint64_t k = first; k != first + len; ++k) {
              const int dst = plan.route(l, e, src, k);
              ASSERT_TRUE(hits.count(dst)) << "route gave non-replica " << dst;
              ++hits[dst];
              EXPECT_EQ(plan.route(l, e, src, k), dst) << "route is not pure";
            }
            std::vector<int64_t> counts;
            for (const auto& [r, n] : hits) counts.push_back(n);
            EXPECT_LE(Spread(counts), 1) << "layer " << l << " expert " << e << " src " << src
                                         << " keys [" << first << ", +" << len << ")";
          }
        }
      }
    }
  }
}

TEST_P(PlacementShapeTest, DeterministicAndJsonRoundTrip) {
  const Shape s = GetParam();
  const PlacementPlan plan = MakeOrDie(s);
  EXPECT_EQ(plan, MakeOrDie(s));

  absl::StatusOr<PlacementPlan> direct = PlacementPlan::FromJson(plan.ToJson());
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(*direct, plan);
  // Through text too, as the plan travels to the ranks.
  absl::StatusOr<PlacementPlan> text =
      PlacementPlan::FromJson(nlohmann::json::parse(plan.ToJson().dump()));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, plan);
  EXPECT_EQ(text->route(0, 0, s.world - 1, 12345), plan.route(0, 0, s.world - 1, 12345));
}

INSTANTIATE_TEST_SUITE_P(Shapes, PlacementShapeTest, ::testing::ValuesIn(AllShapes()),
                         [](const auto& info) { return Name(info.param); });

TEST(PlacementPlanTest, ExampleShapes) {
  // 8 over 3: contiguous blocks of 3,3,2 on layer 0, rotated by one rank on layer 1.
  const PlacementPlan p3 = *PlacementPlan::Make(2, 8, 3);
  EXPECT_EQ(p3.experts_on_rank(0, 0), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(p3.experts_on_rank(0, 1), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(p3.experts_on_rank(0, 2), (std::vector<int64_t>{6, 7}));
  EXPECT_EQ(p3.experts_on_rank(1, 1), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(p3.experts_on_rank(1, 2), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(p3.experts_on_rank(1, 0), (std::vector<int64_t>{6, 7}));

  // 16 over 8: two replicas each; 12 over 8: four experts with two, four with one.
  const PlacementPlan p16 = *PlacementPlan::Make(1, 8, 16);
  for (int64_t e = 0; e < 8; ++e) EXPECT_EQ(p16.replicas(0, e).size(), 2u);
  const PlacementPlan p12 = *PlacementPlan::Make(1, 8, 12);
  std::map<size_t, int> histogram;
  for (int64_t e = 0; e < 8; ++e) ++histogram[p12.replicas(0, e).size()];
  EXPECT_EQ(histogram, (std::map<size_t, int>{{1, 4}, {2, 4}}));

  // One rank holds everything.
  const PlacementPlan p1 = *PlacementPlan::Make(3, 8, 1);
  for (int64_t l = 0; l < 3; ++l) {
    EXPECT_EQ(p1.experts_on_rank(l, 0).size(), 8u);
    EXPECT_EQ(p1.route(l, 5, 0, 99), 0);
  }
}

TEST(PlacementPlanTest, FewTokensFromManySendersUseAllReplicas) {
  // Each of 16 senders routes its first token (key 0): the per-sender offset must stop them
  // all landing on the first replica.
  const PlacementPlan plan = *PlacementPlan::Make(4, 8, 16);
  for (int64_t l = 0; l < 4; ++l) {
    for (int64_t e = 0; e < 8; ++e) {
      std::map<int, int> hits;
      for (int src = 0; src < 16; ++src) ++hits[plan.route(l, e, src, 0)];
      EXPECT_EQ(hits.size(), plan.replicas(l, e).size()) << "layer " << l << " expert " << e;
    }
  }
}

TEST(PlacementPlanTest, MakeRejectsNonPositiveArguments) {
  for (auto [layers, experts, world] : std::vector<std::tuple<int64_t, int64_t, int>>{
           {0, 8, 2}, {-1, 8, 2}, {4, 0, 2}, {4, -8, 2}, {4, 8, 0}, {4, 8, -3}}) {
    absl::StatusOr<PlacementPlan> plan = PlacementPlan::Make(layers, experts, world);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument)
        << layers << " " << experts << " " << world;
  }
}

TEST(PlacementPlanTest, OutOfRangeQueriesAreBugs) {
  const PlacementPlan plan = *PlacementPlan::Make(2, 8, 4);
  EXPECT_THROW(plan.replicas(2, 0), InternalError);
  EXPECT_THROW(plan.replicas(0, 8), InternalError);
  EXPECT_THROW(plan.experts_on_rank(0, 4), InternalError);
  EXPECT_THROW(plan.route(0, 0, -1, 0), InternalError);
}

// A valid 2-layer, 4-expert, 3-rank plan to break in the tests below.
nlohmann::json ValidJson() {
  return nlohmann::json::parse(R"({
    "num_layers": 2, "num_experts": 4, "world_size": 3,
    "replicas": [[[0], [0, 1], [1], [2]], [[2], [1], [0], [0]]]
  })");
}

void ExpectRejected(const nlohmann::json& j, const std::string& mentions) {
  absl::StatusOr<PlacementPlan> plan = PlacementPlan::FromJson(j);
  ASSERT_FALSE(plan.ok()) << j.dump();
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find(mentions), std::string::npos)
      << "error \"" << plan.status().message() << "\" should mention \"" << mentions << "\"";
}

TEST(PlacementJsonTest, AcceptsValidUnsortedAndUnevenPlans) {
  nlohmann::json j = ValidJson();
  j["replicas"][0][1] = {1, 0};  // any order; stored ascending
  absl::StatusOr<PlacementPlan> plan = PlacementPlan::FromJson(j);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->replicas(0, 1), (std::vector<int>{0, 1}));
  EXPECT_EQ(plan->experts_on_rank(1, 0), (std::vector<int64_t>{2, 3}));
  // Rank 1 holds nothing in layer 1 once expert 1 moves away: allowed from JSON.
  j["replicas"][1][1] = {2};
  plan = PlacementPlan::FromJson(j);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->experts_on_rank(1, 1).empty());
  EXPECT_FALSE(plan->Describe().empty());
}

TEST(PlacementJsonTest, RejectsMissingExpert) {
  nlohmann::json empty = ValidJson();
  empty["replicas"][1][2] = nlohmann::json::array();
  ExpectRejected(empty, "replicas[1][2]");

  nlohmann::json dropped = ValidJson();
  dropped["replicas"][0].erase(3);
  ExpectRejected(dropped, "replicas[0]");
}

TEST(PlacementJsonTest, RejectsRankOutOfRange) {
  nlohmann::json high = ValidJson();
  high["replicas"][0][3] = {3};
  ExpectRejected(high, "replicas[0][3]");
  nlohmann::json negative = ValidJson();
  negative["replicas"][1][0] = {-1};
  ExpectRejected(negative, "replicas[1][0]");
  nlohmann::json not_int = ValidJson();
  not_int["replicas"][1][0] = {"0"};
  ExpectRejected(not_int, "replicas[1][0]");
}

TEST(PlacementJsonTest, RejectsDuplicateRank) {
  nlohmann::json j = ValidJson();
  j["replicas"][0][1] = {1, 0, 1};
  ExpectRejected(j, "more than once");
}

TEST(PlacementJsonTest, RejectsWrongSizes) {
  nlohmann::json too_few_layers = ValidJson();
  too_few_layers["num_layers"] = 3;
  ExpectRejected(too_few_layers, "num_layers=3");
  nlohmann::json too_many_experts = ValidJson();
  too_many_experts["num_experts"] = 5;
  ExpectRejected(too_many_experts, "num_experts=5");
  nlohmann::json not_array = ValidJson();
  not_array["replicas"] = 7;
  ExpectRejected(not_array, "\"replicas\"");
}

TEST(PlacementJsonTest, RejectsMissingOrBadHeader) {
  for (const char* key : {"num_layers", "num_experts", "world_size", "replicas"}) {
    nlohmann::json j = ValidJson();
    j.erase(key);
    ExpectRejected(j, key);
  }
  nlohmann::json zero_world = ValidJson();
  zero_world["world_size"] = 0;
  ExpectRejected(zero_world, "world_size");
  nlohmann::json float_layers = ValidJson();
  float_layers["num_layers"] = 2.0;
  ExpectRejected(float_layers, "num_layers");
  ExpectRejected(nlohmann::json::array(), "object");
}


// ---- PlacementPlan::Balanced -----------------------------------------------------------------

// Each rank's load in `layer`, computed here from the plan's lists (not RankLoads): an expert's
// load split evenly over its replicas.
std::vector<double> LoadsOf(const PlacementPlan& plan, int64_t layer, const std::vector<double>& load) {
  std::vector<double> ranks(static_cast<size_t>(plan.world_size()), 0.0);
  for (int r = 0; r < plan.world_size(); ++r) {
    for (int64_t e : plan.experts_on_rank(layer, r)) ranks[r] += load[e] / static_cast<double>(plan.replicas(layer, e).size());
  }
  return ranks;
}

double MaxLoad(const PlacementPlan& plan, int64_t layer, const std::vector<double>& load) {
  const std::vector<double> ranks = LoadsOf(plan, layer, load);
  return *std::max_element(ranks.begin(), ranks.end());
}

// Skewed loads as routers give them: a few experts take several times the others' share.
std::vector<std::vector<double>> SkewedLoads(int64_t layers, int64_t experts, uint32_t seed) {
  std::mt19937 gen(seed);
  std::lognormal_distribution<double> skew(0.0, 0.8);
  std::vector<std::vector<double>> load(static_cast<size_t>(layers));
  for (auto& row : load) {
    for (int64_t e = 0; e < experts; ++e) row.push_back(std::round(1000 * skew(gen)));
  }
  return load;
}

// The least possible busiest-rank load of one layer, by trying every placement: W <= E, each
// expert on one rank, rank r holding capacity[r] experts.
double BestOwnersMax(const std::vector<double>& load, const std::vector<int64_t>& capacity) {
  const size_t E = load.size(), W = capacity.size();
  std::vector<double> rank_load(W, 0.0);
  std::vector<int64_t> held(W, 0);
  double best = std::numeric_limits<double>::infinity();
  std::function<void(size_t)> place = [&](size_t e) {
    if (e == E) {
      best = std::min(best, *std::max_element(rank_load.begin(), rank_load.end()));
      return;
    }
    for (size_t r = 0; r < W; ++r) {
      if (held[r] == capacity[r]) continue;
      rank_load[r] += load[e];
      ++held[r];
      place(e + 1);
      rank_load[r] -= load[e];
      --held[r];
    }
  };
  place(0);
  return best;
}

// The same for W > E, one expert a rank: the least largest load per replica over every way of
// giving the W replicas to the experts, at least one each.
double BestReplicasMax(const std::vector<double>& load, int world) {
  const size_t E = load.size();
  std::vector<int64_t> count(E, 1);
  double best = std::numeric_limits<double>::infinity();
  std::function<void(size_t, int64_t)> give = [&](size_t e, int64_t left) {
    if (e + 1 == E) {
      count[e] = 1 + left;
      double most = 0;
      for (size_t k = 0; k < E; ++k) most = std::max(most, load[k] / static_cast<double>(count[k]));
      best = std::min(best, most);
      return;
    }
    for (int64_t extra = 0; extra <= left; ++extra) {
      count[e] = 1 + extra;
      give(e + 1, left - extra);
    }
  };
  give(0, world - static_cast<int64_t>(E));
  return best;
}

class BalancedPlanTest : public ::testing::TestWithParam<Shape> {};

// The same memory as Make's plan (each rank holds as many experts of each layer, every expert
// placed), and no layer's busiest rank busier than under Make's plan.
TEST_P(BalancedPlanTest, KeepsMakesMemoryAndNoLayersBusiestRankIsBusier) {
  const Shape s = GetParam();
  const PlacementPlan even = MakeOrDie(s);
  const std::vector<std::vector<double>> load = SkewedLoads(s.layers, s.experts, 7u + static_cast<uint32_t>(s.world));
  absl::StatusOr<PlacementPlan> balanced = PlacementPlan::Balanced(load, s.world);
  ASSERT_TRUE(balanced.ok()) << balanced.status();
  EXPECT_EQ(balanced->num_layers(), s.layers);
  EXPECT_EQ(balanced->num_experts(), s.experts);
  EXPECT_EQ(balanced->world_size(), s.world);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int r = 0; r < s.world; ++r) {
      EXPECT_EQ(balanced->experts_on_rank(l, r).size(), even.experts_on_rank(l, r).size()) << "layer " << l << " rank " << r;
    }
    for (int64_t e = 0; e < s.experts; ++e) EXPECT_FALSE(balanced->replicas(l, e).empty());
    EXPECT_LE(MaxLoad(*balanced, l, load[l]), MaxLoad(even, l, load[l])) << "layer " << l;
    const std::vector<double> want = LoadsOf(*balanced, l, load[l]), got = balanced->RankLoads(l, load[l]);
    ASSERT_EQ(got.size(), want.size());
    for (size_t r = 0; r < want.size(); ++r) EXPECT_NEAR(got[r], want[r], 1e-9 * (1 + want[r]));
  }
  absl::StatusOr<PlacementPlan> back = PlacementPlan::FromJson(balanced->ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *balanced);
}

INSTANTIATE_TEST_SUITE_P(Shapes, BalancedPlanTest, ::testing::ValuesIn(AllShapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return Name(info.param); });

// Against every placement of small layers (Mixtral's 8 experts over 2 to 5 ranks, and others up to
// 12 experts; 32 layers, so each gets the search budget of a Mixtral plan): the busiest rank exactly
// as light as the best placement of the same memory.
TEST(BalancedPlanTest, MatchesTheBestPlacementOfSmallLayers) {
  struct Case {
    int64_t experts;
    int world;
  };
  for (const Case c : {Case{8, 2}, Case{8, 3}, Case{8, 4}, Case{6, 4}, Case{8, 5}, Case{4, 3}, Case{9, 4}, Case{12, 4}, Case{12, 3}, Case{10, 4}}) {
    const std::vector<std::vector<double>> load = SkewedLoads(32, c.experts, 100u + static_cast<uint32_t>(c.world));
    const PlacementPlan even = *PlacementPlan::Make(32, c.experts, c.world);
    const PlacementPlan plan = *PlacementPlan::Balanced(load, c.world);
    for (int64_t l = 0; l < 32; ++l) {
      std::vector<int64_t> capacity;
      for (int r = 0; r < c.world; ++r) capacity.push_back(static_cast<int64_t>(even.experts_on_rank(l, r).size()));
      EXPECT_DOUBLE_EQ(MaxLoad(plan, l, load[l]), BestOwnersMax(load[l], capacity))
          << c.experts << " experts over " << c.world << " ranks, layer " << l;
    }
  }
}

TEST(BalancedPlanTest, WithMoreRanksThanExpertsTheBusiestExpertsGetTheSpareReplicas) {
  const std::vector<std::vector<double>> hand = {{6, 1, 1}};
  const PlacementPlan p = *PlacementPlan::Balanced(hand, 5);
  EXPECT_EQ(p.replicas(0, 0).size(), 3u);
  EXPECT_EQ(p.replicas(0, 1).size(), 1u);
  EXPECT_EQ(p.replicas(0, 2).size(), 1u);
  EXPECT_DOUBLE_EQ(MaxLoad(p, 0, hand[0]), 2.0);
  for (int r = 0; r < 5; ++r) EXPECT_EQ(p.experts_on_rank(0, r).size(), 1u);
  for (const auto& [experts, world] : std::vector<std::pair<int64_t, int>>{{8, 12}, {8, 16}, {4, 7}, {3, 11}}) {
    const std::vector<std::vector<double>> load = SkewedLoads(20, experts, 5u + static_cast<uint32_t>(world));
    const PlacementPlan plan = *PlacementPlan::Balanced(load, world);
    for (int64_t l = 0; l < 20; ++l) {
      EXPECT_NEAR(MaxLoad(plan, l, load[l]), BestReplicasMax(load[l], world), 1e-9) << experts << " over " << world;
    }
  }
}

TEST(BalancedPlanTest, AHandExampleAndALayerWithoutLoad) {
  // Make's plan puts experts 0 and 1 together (19 against 2); the best split is 11 / 10.
  const std::vector<std::vector<double>> load = {{10, 9, 1, 1}, {0, 0, 0, 0}};
  const PlacementPlan p = *PlacementPlan::Balanced(load, 2);
  EXPECT_DOUBLE_EQ(MaxLoad(p, 0, load[0]), 11.0);
  EXPECT_NE(p.replicas(0, 0), p.replicas(0, 1));
  const PlacementPlan even = *PlacementPlan::Make(2, 4, 2);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(p.experts_on_rank(1, r), even.experts_on_rank(1, r));
}

TEST(BalancedPlanTest, RefusesLoadsThatAreNotFiniteNonNegativeOrNotOneRowShape) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<std::vector<std::vector<double>>, std::string>> cases = {
      {{}, "no layers"},
      {{{}}, "no experts"},
      {{{1, 2}, {1, 2, 3}}, "layer 1 has 3 experts, layer 0 has 2"},
      {{{1, -1}}, "layer 0 expert 1: -1 is not a finite number >= 0"},
      {{{nan, 1}}, "layer 0 expert 0: nan is not a finite number >= 0"},
      {{{1, 1}, {inf, 1}}, "layer 1 expert 0: inf is not a finite number >= 0"},
  };
  for (const auto& [load, message] : cases) {
    absl::StatusOr<PlacementPlan> p = PlacementPlan::Balanced(load, 2);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_NE(std::string(p.status().message()).find(message), std::string::npos) << p.status();
  }
  EXPECT_EQ(PlacementPlan::Balanced({{1, 2}}, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe
