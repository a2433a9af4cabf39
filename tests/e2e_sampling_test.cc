// End-to-end sampling controls: a real moe-coordinator and `mpirun -np 2 moe-worker` on the golden
// tiny model, every request through the public Generate API at once. Penalties and min_tokens give
// transformers' greedy tokens under the same penalties (tests/data/golden/tiny/penalties.json, from
// make_penalties_golden.py), ending where transformers ended (an extra end id after min_tokens);
// min_p = 1 at temperature 1 keeps only the most probable token, so it samples transformers' plain
// greedy continuation (expected.json); bad values are refused naming the field; n completions are
// each what a single request with seed + i gives.
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"
#include "tests/support/penalty_cases.h"

namespace moe::e2e {
namespace {

using nlohmann::json;

// A Generate stream of `n` completions, read to its end, folded per index.
struct ChoicesOutcome {
  std::vector<client::GenerationResult> choices;
  absl::Status status;
};
ChoicesOutcome RunChoices(moe::v1::Inference::Stub& stub, const moe::v1::GenerateRequest& req, uint32_t n) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(120));
  ChoicesOutcome o;
  o.choices.resize(n);
  auto reader = stub.Generate(&ctx, req);
  moe::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.index() >= n) {
      o.status = absl::InternalError(absl::StrCat("completion index ", msg.index(), " of ", n));
      ctx.TryCancel();
      reader->Finish();
      return o;
    }
    o.choices[msg.index()].Add(msg);
  }
  const grpc::Status s = reader->Finish();
  if (!s.ok()) o.status = absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  for (uint32_t i = 0; i < n && o.status.ok(); ++i) {
    if (!o.choices[i].finished()) o.status = absl::InternalError(absl::StrCat("completion ", i, " never finished"));
  }
  return o;
}

TEST(E2eSampling, PenaltiesMinTokensAndMinPThroughTheClusterGiveTransformersTokens) {
  testing_ref::SetMpiTestEnvironment();
  std::ifstream f(testing_ref::kGoldenDir + "/penalties.json");
  ASSERT_TRUE(f.good());
  const json ref = json::parse(f);
  const testing_ref::Golden golden = testing_ref::Golden::Load();
  const uint32_t max_tokens = ref["max_tokens"];

  std::vector<moe::v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> want;
  for (const json& c : ref["cases"]) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(c["prompt"]), max_tokens);
    moe::v1::SamplingParams* s = r.mutable_sampling();
    s->set_ignore_eos(false);  // as transformers ran
    testing_ref::SetPenaltyCaseFields(c, *s);
    requests.push_back(r);
    want.push_back(c["tokens"].get<std::vector<int32_t>>());
  }
  const size_t penalty_requests = requests.size();
  for (size_t p = 0; p < golden.num_prompts(); ++p) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(p), max_tokens);
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_min_p(1.0f);
    r.mutable_sampling()->set_seed(p);
    requests.push_back(r);
    want.push_back(golden.greedy(p));
  }

  Cluster cluster(ClusterOptions{2, testing_ref::kGoldenDir, {}, {}});
  const absl::Status started = cluster.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started << cluster.LogTail();
  auto stub = moe::v1::Inference::NewStub(cluster.channel());

  std::vector<StreamOutcome> got(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { got[i] = RunGenerate(*stub, requests[i], 120); });
  }
  for (std::thread& t : threads) t.join();
  int ended_by_stop_id = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i < penalty_requests ? ref["cases"][i]["case"].get<std::string>() + " prompt " +
                                            std::to_string(ref["cases"][i]["prompt"].get<int>())
                                      : "min_p 1, prompt " + std::to_string(i - penalty_requests));
    ASSERT_TRUE(got[i].status.ok()) << got[i].status << cluster.LogTail();
    EXPECT_EQ(got[i].result.token_ids, want[i]);
    const bool early = want[i].size() < max_tokens;
    ended_by_stop_id += early;
    EXPECT_EQ(got[i].result.finish_reason, early ? moe::v1::FINISH_REASON_STOP : moe::v1::FINISH_REASON_LENGTH);
  }
  EXPECT_GE(ended_by_stop_id, 1);

  // Bad values: INVALID_ARGUMENT naming the field, the cluster still serving afterwards.
  for (const auto& [field, set] : std::vector<std::pair<std::string, void (*)(moe::v1::SamplingParams&)>>{
           {"sampling.repetition_penalty", [](moe::v1::SamplingParams& s) { s.set_repetition_penalty(0.0f); }},
           {"sampling.frequency_penalty", [](moe::v1::SamplingParams& s) { s.set_frequency_penalty(2.5f); }},
           {"sampling.min_tokens", [](moe::v1::SamplingParams& s) { s.set_min_tokens(100); }},
           {"sampling.min_p", [](moe::v1::SamplingParams& s) { s.set_min_p(-1.0f); }},
           {"sampling.logit_bias[1024]", [](moe::v1::SamplingParams& s) { (*s.mutable_logit_bias())[1024] = 1.0f; }},
           {"sampling.logit_bias[7]", [](moe::v1::SamplingParams& s) { (*s.mutable_logit_bias())[7] = 101.0f; }}}) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(1), 4);
    set(*r.mutable_sampling());
    const StreamOutcome o = RunGenerate(*stub, r, 30);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument) << o.status;
    EXPECT_NE(std::string(o.status.message()).find(field), std::string::npos) << o.status;
  }
  const StreamOutcome after = RunGenerate(*stub, GreedyTokenRequest(golden.prompt(1), 4), 30);
  ASSERT_TRUE(after.status.ok()) << after.status;
  const std::vector<int32_t> greedy1 = golden.greedy(1);
  EXPECT_EQ(after.result.token_ids, std::vector<int32_t>(greedy1.begin(), greedy1.begin() + 4));

  // n completions: greedy ones all carry transformers' tokens; sampled ones, completion i, the
  // tokens of a single request with seed + i.
  {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(2), max_tokens);
    r.mutable_sampling()->set_n(3);
    const ChoicesOutcome o = RunChoices(*stub, r, 3);
    ASSERT_TRUE(o.status.ok()) << o.status;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(o.choices[i].token_ids, golden.greedy(2)) << "completion " << i;
  }
  {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(3), 12);
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_top_k(20);
    r.mutable_sampling()->set_seed(11);
    r.mutable_sampling()->set_n(4);
    const ChoicesOutcome o = RunChoices(*stub, r, 4);
    ASSERT_TRUE(o.status.ok()) << o.status;
    std::set<std::vector<int32_t>> distinct;
    for (uint32_t i = 0; i < 4; ++i) {
      moe::v1::GenerateRequest single = r;
      single.mutable_sampling()->clear_n();
      single.mutable_sampling()->set_seed(11 + i);
      const StreamOutcome one = RunGenerate(*stub, single, 60);
      ASSERT_TRUE(one.status.ok()) << one.status;
      EXPECT_EQ(o.choices[i].token_ids, one.result.token_ids) << "completion " << i;
      EXPECT_EQ(o.choices[i].token_ids.size(), 12u);
      EXPECT_EQ(o.choices[i].usage.completion_tokens(), 12u);
      distinct.insert(o.choices[i].token_ids);
    }
    EXPECT_GT(distinct.size(), 1u) << "different seeds, the same tokens every time";
  }

  const Cluster::ExitStatus stopped = cluster.Stop(Seconds(30));
  EXPECT_EQ(stopped.coordinator, 0);
  EXPECT_EQ(stopped.mpirun, 0);
}

}  // namespace
}  // namespace moe::e2e
