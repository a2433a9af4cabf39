// End-to-end sampling controls: a real moe-coordinator and `mpirun -np 2 moe-worker` on the golden
// tiny model, every request through the public Generate API at once. Penalties and min_tokens give
// transformers' greedy tokens under the same penalties (tests/data/golden/tiny/penalties.json, from
// make_penalties_golden.py), ending where transformers ended (an extra end id after min_tokens);
// min_p = 1 at temperature 1 keeps only the most probable token, so it samples transformers' plain
// greedy continuation (expected.json); bad values are refused naming the field; n completions are
// each what a single request with seed + i gives.
//
// Built a second time with MOE_E2E_GPU_WORKERS (e2e_gpu_sampling_test, label gpu): the same
// requests on GPU ranks (`moe-worker --device gpu`; both ranks share the device when there is one),
// where rows with penalties, logit_bias, min_tokens and min_p are sampled on the device (the
// penalties as per-id adjustments, min_tokens as a bit row of the ids allowed).
// The bf16 engine moves a logit by ~1e-2, so there a token is compared only up to the first step whose
// reference margin (gap between the two best adjusted logits) is below 0.05, as gpu_engine_test
// compares the golden greedy tokens; it skips without a CUDA device.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#ifdef MOE_E2E_GPU_WORKERS
#include <cuda_runtime.h>
#endif
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

#ifdef MOE_E2E_GPU_WORKERS
constexpr double kMarginTol = 0.05;
const std::vector<std::string> kWorkerArgs = {"--device", "gpu", "--gpu-memory-utilization", "0.2"};
bool HaveDevice() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  return ok;
}
#else
constexpr double kMarginTol = 0;  // the float32 CPU engine: every token
const std::vector<std::string> kWorkerArgs = {};
bool HaveDevice() { return true; }
#endif

// The number of leading steps whose reference margin is at least kMarginTol.
size_t ComparableSteps(const std::vector<double>& margins) {
  size_t i = 0;
  while (i < margins.size() && margins[i] >= kMarginTol) ++i;
  return i;
}

// `got` carries `want` up to its first step below the margin tolerance; returns how many tokens were
// compared. When every step is comparable, `got` must be `want` exactly (length included).
size_t ExpectTokensUpToLowMargin(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                                 const std::vector<double>& margins) {
  const size_t n = ComparableSteps(margins);
  if (n == want.size()) {
    EXPECT_EQ(got, want);
  } else {
    EXPECT_GE(got.size(), n);
    EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + std::min(n, got.size())),
              std::vector<int32_t>(want.begin(), want.begin() + n))
        << "the first " << n << " steps have reference margin >= " << kMarginTol;
  }
  return n;
}

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
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  testing_ref::SetMpiTestEnvironment();
  std::ifstream f(testing_ref::kGoldenDir + "/penalties.json");
  ASSERT_TRUE(f.good());
  const json ref = json::parse(f);
  const testing_ref::Golden golden = testing_ref::Golden::Load();
  const uint32_t max_tokens = ref["max_tokens"];

  std::vector<moe::v1::GenerateRequest> requests;
  std::vector<std::vector<int32_t>> want;
  std::vector<std::vector<double>> margins;  // the reference's, per step
  for (const json& c : ref["cases"]) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(c["prompt"]), max_tokens);
    moe::v1::SamplingParams* s = r.mutable_sampling();
    s->set_ignore_eos(false);  // as transformers ran
    testing_ref::SetPenaltyCaseFields(c, *s);
    requests.push_back(r);
    want.push_back(c["tokens"].get<std::vector<int32_t>>());
    margins.push_back(c["margins"].get<std::vector<double>>());
  }
  const size_t penalty_requests = requests.size();
  for (size_t p = 0; p < golden.num_prompts(); ++p) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(p), max_tokens);
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_min_p(1.0f);
    r.mutable_sampling()->set_seed(p);
    requests.push_back(r);
    want.push_back(golden.greedy(p));
    margins.push_back(golden.GreedyMargins(p));
  }

  Cluster cluster(ClusterOptions{2, testing_ref::kGoldenDir, {}, kWorkerArgs});
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
  size_t compared = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i < penalty_requests ? ref["cases"][i]["case"].get<std::string>() + " prompt " +
                                            std::to_string(ref["cases"][i]["prompt"].get<int>())
                                      : "min_p 1, prompt " + std::to_string(i - penalty_requests));
    ASSERT_TRUE(got[i].status.ok()) << got[i].status << cluster.LogTail();
    const size_t n = ExpectTokensUpToLowMargin(got[i].result.token_ids, want[i], margins[i]);
    compared += n;
    if (n < want[i].size()) continue;
    const bool early = want[i].size() < max_tokens;
    ended_by_stop_id += early;
    EXPECT_EQ(got[i].result.finish_reason, early ? moe::v1::FINISH_REASON_STOP : moe::v1::FINISH_REASON_LENGTH);
  }
  // With the current golden data: all 823 tokens on CPU ranks; 231 of the penalty cases' and 61 of the
  // greedy continuations' above the bf16 margin on GPU ranks, the min_tokens case that ends with an
  // extra end id among them.
  std::printf("%zu tokens compared, %d requests ended by a stop id where transformers' did\n", compared,
              ended_by_stop_id);
  EXPECT_GE(compared, kMarginTol > 0 ? 250u : 800u);
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
  std::vector<double> margins1 = golden.GreedyMargins(1);
  margins1.resize(4);
  ExpectTokensUpToLowMargin(after.result.token_ids, std::vector<int32_t>(greedy1.begin(), greedy1.begin() + 4),
                            margins1);

  // n completions: greedy ones all carry transformers' tokens; sampled ones, completion i, the
  // tokens of a single request with seed + i.
  {
    moe::v1::GenerateRequest r = GreedyTokenRequest(golden.prompt(2), max_tokens);
    r.mutable_sampling()->set_n(3);
    const ChoicesOutcome o = RunChoices(*stub, r, 3);
    ASSERT_TRUE(o.status.ok()) << o.status;
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE("completion " + std::to_string(i));
      ExpectTokensUpToLowMargin(o.choices[i].token_ids, golden.greedy(2), golden.GreedyMargins(2));
    }
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
