// moe-coordinator --expert-load FILE (coordinator/expert_load.h): GetStats' JSON as moe-client prints
// it (proto field names, int64 counts as strings) and as proto3's other JSON forms write it (the
// Python client's camelCase, numbers) reads as the layers' expert_tokens; a file that does not fit
// the model, or that is not that JSON, is refused naming the file and what is wrong.
#include "coordinator/expert_load.h"

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/random_model.h"

namespace moe {
namespace {

ModelConfig TwoLayersOfThreeExperts() {
  ModelConfig c;
  c.num_layers = 2;
  c.num_experts = 3;
  return c;
}

std::string Write(const std::string& text) {
  static const std::string dir = testing_ref::MakeTempDir("expert_load_test_");
  static int n = 0;
  const std::string path = dir + "/stats" + std::to_string(n++) + ".json";
  std::ofstream(path) << text;
  return path;
}

TEST(ExpertLoad, ReadsMoeClientStatsAndProto3sOtherJsonForms) {
  const std::vector<std::vector<double>> want = {{5, 0, 7}, {1, 2, 3}};
  const std::string moe_client = R"({"requests_running": "0", "layers": [
      {"layer": "0", "expert_tokens": ["5", "0", "7"], "rank_rows": ["12"], "mean_imbalance": 1.2},
      {"layer": "1", "expert_tokens": ["1", "2", "3"], "rank_rows": ["6"]}], "ranks": [], "a_newer_field": 1})";
  const std::string camel = R"({"layers": [{"expertTokens": [5, 0, 7]}, {"layer": 1, "expertTokens": [1, 2, 3]}]})";
  for (const std::string& text : {moe_client, camel}) {
    absl::StatusOr<std::vector<std::vector<double>>> load = ReadExpertLoad(Write(text), TwoLayersOfThreeExperts());
    ASSERT_TRUE(load.ok()) << load.status();
    EXPECT_EQ(*load, want);
  }
}

TEST(ExpertLoad, RefusesWhatDoesNotFitTheModelNamingTheFileAndWhy) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "not the JSON of GetStats' answer (moe-client stats)"},
      {R"({"layers": 5})", "not the JSON of GetStats' answer"},
      {R"({"layers": []})", "has the load of 0 layers; the model has 2 (is it moe-client stats output, taken after the cluster served requests?)"},
      {R"({"layers": [{"expert_tokens": [1, 2, 3]}]})", "has the load of 1 layers; the model has 2"},
      {R"({"layers": [{"expert_tokens": [1, 2, 3]}, {"layer": 2, "expert_tokens": [1, 2, 3]}]})", "layers[1] is layer 2; expected 1"},
      {R"({"layers": [{"expert_tokens": [1, 2]}, {"layer": 1, "expert_tokens": [1, 2, 3]}]})",
       "layers[0].expert_tokens has 2 counts; the model has 3 experts"},
      {R"({"layers": [{"expert_tokens": [1, -2, 3]}, {"layer": 1, "expert_tokens": [1, 2, 3]}]})", "layers[0].expert_tokens[1] is negative"},
      {R"({"layers": [{"expert_tokens": [0, 0, 0]}, {"layer": 1, "expert_tokens": [0, 0, 0]}]})",
       "no tokens were routed to any expert"},
  };
  for (const auto& [text, why] : cases) {
    const std::string path = Write(text);
    absl::StatusOr<std::vector<std::vector<double>>> load = ReadExpertLoad(path, TwoLayersOfThreeExperts());
    EXPECT_EQ(load.status().code(), absl::StatusCode::kInvalidArgument) << text << ": " << load.status();
    EXPECT_NE(std::string(load.status().message()).find("--expert-load " + path + ": " + why), std::string::npos)
        << text << ": " << load.status();
  }
  const absl::Status missing = ReadExpertLoad("/nonexistent/stats.json", TwoLayersOfThreeExperts()).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument) << missing;
  EXPECT_NE(std::string(missing.message()).find("--expert-load /nonexistent/stats.json: "), std::string::npos) << missing;
}

}  // namespace
}  // namespace moe
