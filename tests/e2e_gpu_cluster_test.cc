// End-to-end on GPUs: a real moe-coordinator and `mpirun -np 2 moe-worker --device gpu` on
// loopback serving the default model, driven through the public gRPC API. Concurrent greedy
// streams must carry exactly the tokens of a single-GPU GpuEngine run in this process
// (GenerateAll), and those are anchored to transformers: the greedy continuations of the model's
// samples.json; sampled streams carry the single-GPU engine's sampled tokens for the same seeds. With two GPUs or more each rank has its own and the MoE rows cross over NCCL (the
// device exchange in decode); with one both ranks share it and the rows go through the host.
// Skips without a CUDA device.
//
// Prompts go as token ids; one test sends text with response_format json_schema, whose mask the
// ranks apply to the logits rows they take to the host.
#include <cuda_runtime.h>

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clients/cpp/generation_result.h"
#include "common/json_util.h"
#include "coordinator/placement.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"
#include "worker/comm/local_communicator.h"
#include "worker/generation.h"
#include "worker/gpu/gpu_engine.h"

namespace moe::e2e {
namespace {

using nlohmann::json;

const std::string kModelDir = testing_ref::kDefaultModelDir;
constexpr int kGreedyTokens = 48;  // as samples.json
constexpr int kStreams = 12;
constexpr int kSampledTokens = 32;

// The sampled streams' parameters: stream i has seed 100 + i.
SamplingParams Sampled(int i) {
  return SamplingParams{.temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 100 + static_cast<uint64_t>(i)};
}

int CudaDevices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

struct Sample {
  std::string prompt;
  std::vector<int32_t> prompt_ids, transformers_ids, engine_ids;
  std::vector<int32_t> engine_sampled_ids;  // with Sampled(i) for sample i
  std::vector<float> engine_prompt_logprobs;  // ScoreAll of the prompt: tokens 1..n-1
};

class E2eGpuCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (CudaDevices() == 0) return;
    testing_ref::SetMpiTestEnvironment();
    setup_ = Reference();
    if (!setup_.ok()) return;
    // No --kv-tokens: each rank's KV cache takes what is left of its share of the memory fraction.
    // The prefix cache is on (the default): these streams repeat prompts, so most of them start
    // from cached blocks and still give the single engine's tokens.
    cluster_ = std::make_unique<Cluster>(
        ClusterOptions{2, kModelDir, {}, {"--device", "gpu", "--gpu-memory-utilization", "0.2"}});
    setup_ = cluster_->Start(Seconds(120));
  }
  static void TearDownTestSuite() {
    if (cluster_) cluster_->Stop(Seconds(20));
    cluster_.reset();
  }
  void SetUp() override {
    if (CudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(setup_.ok()) << setup_ << "\n" << (cluster_ ? cluster_->LogTail() : "");
  }
  void TearDown() override {
    if (HasFailure() && cluster_) std::fprintf(stderr, "%s", cluster_->LogTail().c_str());
  }

  // Stream i generates from sample i % samples with `sampling(i)` (max_tokens, ignore_eos set),
  // all n at once, each on its own channel.
  static std::vector<StreamOutcome> RunStreams(int n, int max_tokens, SamplingParams (*sampling)(int)) {
    std::vector<moe::v1::GenerateRequest> requests(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      moe::v1::GenerateRequest& req = requests[static_cast<size_t>(i)];
      for (int32_t id : samples_[i % samples_.size()].prompt_ids) {
        req.mutable_prompt()->mutable_token_ids()->add_ids(id);
      }
      const SamplingParams p = sampling(i);
      moe::v1::SamplingParams* sp = req.mutable_sampling();
      sp->set_max_tokens(max_tokens);
      sp->set_temperature(p.temperature);
      sp->set_top_k(p.top_k);
      sp->set_top_p(p.top_p);
      sp->set_seed(p.seed);
      sp->set_ignore_eos(true);
    }
    return RunGenerateConcurrently(cluster_->public_address(), requests, 120);
  }

  // The samples' greedy continuations by a single-GPU engine in this process.
  static absl::Status Reference() {
    MOE_ASSIGN_OR_RETURN(json samples, ReadJsonFile(kModelDir + "/samples.json"));
    MOE_ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromModelDir(kModelDir));
    MOE_ASSIGN_OR_RETURN(PlacementPlan plan, PlacementPlan::Make(c.num_layers, c.num_experts, 1));
    LocalCommunicator comm;
    gpu::GpuEngineOptions opts;
    opts.kv_tokens = 4096;
    opts.device = 0;
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<gpu::GpuEngine> engine, gpu::GpuEngine::Load(kModelDir, comm, plan, opts));
    std::vector<GenerateRequest> reqs;
    for (const json& s : samples["greedy_samples"]) {
      Sample x;
      x.prompt = s["prompt"].get<std::string>();
      x.prompt_ids = s["prompt_ids"].get<std::vector<int32_t>>();
      x.transformers_ids = s["greedy_ids"].get<std::vector<int32_t>>();
      GenerateRequest r;
      r.prompt = x.prompt_ids;
      r.max_tokens = kGreedyTokens;
      r.sampling.temperature = 0;
      r.ignore_eos = true;
      reqs.push_back(r);
      samples_.push_back(x);
    }
    MOE_ASSIGN_OR_RETURN(auto res, GenerateAll(*engine, reqs));
    for (size_t i = 0; i < samples_.size(); ++i) samples_[i].engine_ids = res[i].tokens;
    for (size_t i = 0; i < reqs.size(); ++i) {
      reqs[i].sampling = Sampled(static_cast<int>(i));
      reqs[i].max_tokens = kSampledTokens;
    }
    MOE_ASSIGN_OR_RETURN(res, GenerateAll(*engine, reqs));
    for (size_t i = 0; i < samples_.size(); ++i) samples_[i].engine_sampled_ids = res[i].tokens;
    for (Sample& x : samples_) {
      MOE_ASSIGN_OR_RETURN(auto scored, ScoreAll(*engine, {x.prompt_ids}));
      x.engine_prompt_logprobs.assign(scored[0].logprobs.begin() + 1, scored[0].logprobs.end());
    }
    return absl::OkStatus();
  }

  static inline std::unique_ptr<Cluster> cluster_;
  static inline absl::Status setup_;
  static inline std::vector<Sample> samples_;
};

TEST_F(E2eGpuCluster, RanksRegisterTheirGpusAndSizeTheirKvCaches) {
  auto stub = moe::v1::Inference::NewStub(cluster_->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(5));
  moe::v1::ClusterInfo info;
  ASSERT_TRUE(stub->GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &info).ok());
  ASSERT_EQ(info.ranks_size(), 2);
  for (const auto& r : info.ranks()) {
    EXPECT_NE(r.device().find("cuda:"), std::string::npos) << "rank " << r.rank() << ": " << r.device();
    EXPECT_GT(r.weight_bytes(), 0) << "rank " << r.rank();
  }
  // The KV caches were sized from the memory fraction: far more than the CPU default of 64 full
  // contexts (4,096 positions each, blocks of 16).
  grpc::ClientContext stats_ctx;
  stats_ctx.set_deadline(Deadline(5));
  moe::v1::Stats stats;
  ASSERT_TRUE(stub->GetStats(&stats_ctx, moe::v1::GetStatsRequest(), &stats).ok());
  ASSERT_EQ(stats.ranks_size(), 2);
  for (const auto& r : stats.ranks()) EXPECT_GT(r.kv_blocks_total(), 64 * 4096 / 16) << "rank " << r.rank();
}

TEST_F(E2eGpuCluster, ConcurrentGreedyStreamsMatchSingleGpuEngine) {
  // The in-process engine agrees with transformers on the samples (the tiny model's margins are
  // wide: gpu_mixtral_test checks them against bf16 error).
  for (const Sample& s : samples_) EXPECT_EQ(s.engine_ids, s.transformers_ids) << json(s.prompt).dump();

  const std::vector<StreamOutcome> outcomes =
      RunStreams(kStreams, kGreedyTokens, [](int) { return SamplingParams{.temperature = 0.f}; });
  for (int i = 0; i < kStreams; ++i) {
    const Sample& s = samples_[i % samples_.size()];
    const client::GenerationResult& r = outcomes[i].result;
    ASSERT_TRUE(outcomes[i].status.ok()) << "stream " << i << ": " << outcomes[i].status;
    EXPECT_EQ(r.token_ids, s.engine_ids) << "stream " << i << " prompt " << json(s.prompt).dump();
    EXPECT_EQ(r.usage.prompt_tokens(), s.prompt_ids.size()) << "stream " << i;
  }
}

// Sampled streams (temperature, top-k, top-p, a seed each), sampled on the workers' GPU: the tokens
// of the single-GPU engine with the same parameters, whatever the batch they share.
TEST_F(E2eGpuCluster, ConcurrentSampledStreamsMatchSingleGpuEngine) {
  const int n = static_cast<int>(samples_.size());
  const std::vector<StreamOutcome> outcomes = RunStreams(n, kSampledTokens, Sampled);
  int differ_from_greedy = 0;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << "stream " << i << ": " << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.token_ids, samples_[i].engine_sampled_ids) << "stream " << i;
    const std::vector<int32_t>& g = samples_[i].engine_ids;
    differ_from_greedy += outcomes[i].result.token_ids != std::vector<int32_t>(g.begin(), g.begin() + kSampledTokens);
  }
  EXPECT_GT(differ_from_greedy, 0) << "no stream left the greedy path: were the parameters applied?";
}

// Text prompts with response_format json_schema on GPU ranks: every answer that ends is a JSON
// object nlohmann reads whose fields are what the schema says (the enum's values, the string's
// bounds, an integer), greedy and sampled.
TEST_F(E2eGpuCluster, JsonSchemaAnswersFromGpuRanksAreWhatTheSchemaAdmits) {
  auto stub = moe::v1::Inference::NewStub(cluster_->channel());
  const std::string schema = R"({"type": "object", "properties": {"speaker": {"enum": ["ROMEO", "JULIET"]},
      "line": {"type": "string", "minLength": 3, "maxLength": 30}, "act": {"type": "integer"}},
      "required": ["speaker", "line", "act"]})";
  int checked = 0;
  for (const char* prompt : {"ROMEO:", "JULIET:"}) {
    for (float temperature : {0.0f, 1.0f}) {
      moe::v1::GenerateRequest r;
      r.mutable_prompt()->set_text(prompt);
      moe::v1::SamplingParams* s = r.mutable_sampling();
      s->set_max_tokens(300);
      s->set_temperature(temperature);
      s->set_seed(7);
      s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_JSON_SCHEMA);
      s->mutable_response_format()->set_json_schema(schema);
      const StreamOutcome o = RunGenerate(*stub, r, 120);
      ASSERT_TRUE(o.status.ok()) << o.status << cluster_->LogTail();
      ASSERT_EQ(o.result.finish_reason, moe::v1::FINISH_REASON_STOP) << o.result.text;
      const json v = json::parse(o.result.text, nullptr, /*allow_exceptions=*/false);
      ASSERT_TRUE(v.is_object()) << o.result.text;
      EXPECT_TRUE(v["speaker"] == "ROMEO" || v["speaker"] == "JULIET") << o.result.text;
      ASSERT_TRUE(v["line"].is_string()) << o.result.text;
      EXPECT_GE(v["line"].get<std::string>().size(), 3u);
      EXPECT_TRUE(v["act"].is_number_integer()) << o.result.text;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 4);
}

// prompt_logprobs from GPU ranks: the single-GPU engine's scores of the prompt (bf16: within 0.05;
// the rows come from other batches), then the greedy tokens.
TEST_F(E2eGpuCluster, PromptLogprobsFromGpuRanksAreTheSingleGpuEnginesScores) {
  auto stub = moe::v1::Inference::NewStub(cluster_->channel());
  for (const Sample& s : samples_) {
    moe::v1::GenerateRequest r = GreedyTokenRequest(s.prompt_ids, 8);
    r.mutable_sampling()->set_prompt_logprobs(1);
    const StreamOutcome o = RunGenerate(*stub, r, 120);
    ASSERT_TRUE(o.status.ok()) << o.status << cluster_->LogTail();
    EXPECT_EQ(o.result.token_ids, std::vector<int32_t>(s.engine_ids.begin(), s.engine_ids.begin() + 8));
    ASSERT_EQ(o.result.prompt_logprobs.size(), s.prompt_ids.size() - 1);
    for (size_t i = 0; i < o.result.prompt_logprobs.size(); ++i) {
      const moe::v1::TokenLogprob& lp = o.result.prompt_logprobs[i];
      EXPECT_EQ(lp.token_id(), s.prompt_ids[i + 1]);
      EXPECT_NEAR(lp.logprob(), s.engine_prompt_logprobs[i], 0.05) << json(s.prompt).dump() << " token " << i + 1;
      EXPECT_GE(lp.rank(), 1u);
      ASSERT_EQ(lp.top_size(), 1);
      EXPECT_GE(lp.top(0).logprob(), lp.logprob() - 1e-6);
    }
  }
}

TEST_F(E2eGpuCluster, ShutsDownCleanly) {
  const Cluster::ExitStatus st = cluster_->Stop(Seconds(20));
  EXPECT_EQ(st.coordinator, 0) << cluster_->LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster_->LogTail();
  EXPECT_TRUE(cluster_->LeftoverProcesses().empty());
}

// --- a cluster on synthetic weights -----------------------------------------------------------------

// moe-worker --synthetic-weights: a folder holding only config.json (the default model's), the
// weights built on the GPU from the seed. The streams must carry the greedy tokens of a GpuEngine
// built in this process by LoadSynthetic with the same config and seed: the flag reached the engine
// and nothing was read from a checkpoint (there is none). The worker also caches prompt prefixes
// (--enable-prefix-caching), which the second test uses.
class E2eGpuSyntheticCluster : public ::testing::Test {
 protected:
  static constexpr uint64_t kSeed = 7;
  static constexpr int kTokens = 16;
  static constexpr int kPromptLen = 9;
  static constexpr int kRequests = 6;

  static std::vector<int32_t> Prompt(int i) {
    std::vector<int32_t> p;
    for (int k = 0; k < kPromptLen + i; ++k) p.push_back((37 * i + 101 * k + 5) % 2048);
    return p;
  }

  static void SetUpTestSuite() {
    if (CudaDevices() == 0) return;
    testing_ref::SetMpiTestEnvironment();
    char tmpl[] = "/tmp/moe_e2e_synthetic_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      setup_ = absl::InternalError("cannot create a temporary directory");
      return;
    }
    model_dir_ = tmpl;
    std::error_code ec;
    std::filesystem::copy_file(kModelDir + "/config.json", model_dir_ + "/config.json", ec);
    if (ec) {
      setup_ = absl::InternalError("cannot copy config.json: " + ec.message());
      return;
    }
    setup_ = Reference();
    if (!setup_.ok()) return;
    cluster_ = std::make_unique<Cluster>(ClusterOptions{
        1, model_dir_, {},
        {"--device", "gpu", "--synthetic-weights", std::to_string(kSeed), "--kv-tokens", "8192", "--enable-prefix-caching"}});
    setup_ = cluster_->Start(Seconds(120));
  }
  static void TearDownTestSuite() {
    if (cluster_) cluster_->Stop(Seconds(20));
    cluster_.reset();
    if (!model_dir_.empty()) std::filesystem::remove_all(model_dir_);
  }
  void SetUp() override {
    if (CudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(setup_.ok()) << setup_ << "\n" << (cluster_ ? cluster_->LogTail() : "");
  }
  void TearDown() override {
    if (HasFailure() && cluster_) std::fprintf(stderr, "%s", cluster_->LogTail().c_str());
  }

  static absl::Status Reference() {
    MOE_ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromModelDir(model_dir_));
    MOE_ASSIGN_OR_RETURN(PlacementPlan plan, PlacementPlan::Make(c.num_layers, c.num_experts, 1));
    LocalCommunicator comm;
    gpu::GpuEngineOptions opts;
    opts.kv_tokens = 4096;
    opts.device = 0;
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<gpu::GpuEngine> engine,
                         gpu::GpuEngine::LoadSynthetic(c, comm, plan, opts, kSeed));
    std::vector<GenerateRequest> reqs;
    for (int i = 0; i < kRequests; ++i) {
      GenerateRequest r;
      r.prompt = Prompt(i);
      r.max_tokens = kTokens;
      r.sampling.temperature = 0;
      r.ignore_eos = true;
      reqs.push_back(r);
    }
    MOE_ASSIGN_OR_RETURN(auto res, GenerateAll(*engine, reqs));
    for (const auto& r : res) expected_.push_back(r.tokens);
    // The same prompts followed by what they generated, on the engine without prefix caching.
    for (int i = 0; i < kRequests; ++i) reqs[i].prompt = Extended(i);
    MOE_ASSIGN_OR_RETURN(res, GenerateAll(*engine, reqs));
    for (const auto& r : res) expected_extended_.push_back(r.tokens);
    return absl::OkStatus();
  }

  static std::vector<int32_t> Extended(int i) {
    std::vector<int32_t> p = Prompt(i);
    p.insert(p.end(), expected_[i].begin(), expected_[i].end());
    return p;
  }

  // All requests at once; their outcomes in order.
  static std::vector<StreamOutcome> RunAll(std::vector<int32_t> (*prompt)(int)) {
    std::vector<moe::v1::GenerateRequest> requests;
    for (int i = 0; i < kRequests; ++i) requests.push_back(GreedyTokenRequest(prompt(i), kTokens));
    return RunGenerateConcurrently(cluster_->public_address(), requests, 120);
  }

  static inline std::unique_ptr<Cluster> cluster_;
  static inline std::string model_dir_;
  static inline absl::Status setup_;
  static inline std::vector<std::vector<int32_t>> expected_, expected_extended_;
};

TEST_F(E2eGpuSyntheticCluster, StreamsCarryTheTokensOfTheSameSeededWeights) {
  const std::vector<StreamOutcome> outcomes = RunAll(Prompt);
  std::set<std::vector<int32_t>> distinct;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << "stream " << i << ": " << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.token_ids, expected_[i]) << "stream " << i;
    distinct.insert(expected_[i]);
  }
  EXPECT_GT(distinct.size(), 1u) << "every prompt gave the same tokens: are the weights degenerate?";
}

// The worker runs with --enable-prefix-caching: each prompt followed by what it generated starts
// with a whole block the first test's request left cached (16 of its 25-30 tokens), so the GPU
// engine computes only the rest, from attached blocks, and must give the engine's tokens without
// caching.
TEST_F(E2eGpuSyntheticCluster, PromptsStartingWithCachedBlocksCarryTheUncachedEnginesTokens) {
  const std::vector<StreamOutcome> outcomes = RunAll(Extended);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << "stream " << i << ": " << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.token_ids, expected_extended_[i]) << "stream " << i;
  }
  int64_t hits = 0;
  for (int attempt = 0; attempt < 100 && hits < 16 * kRequests; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the stats come with heartbeats
    auto stub = moe::v1::Inference::NewStub(cluster_->channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(5));
    moe::v1::Stats stats;
    if (!stub->GetStats(&ctx, moe::v1::GetStatsRequest(), &stats).ok()) continue;
    hits = 0;
    for (const auto& r : stats.ranks()) hits += r.prefix_cache_hit_tokens();
  }
  EXPECT_EQ(hits, 16 * kRequests) << "one whole block of every extended prompt";
}

TEST_F(E2eGpuSyntheticCluster, ShutsDownCleanly) {
  const Cluster::ExitStatus st = cluster_->Stop(Seconds(20));
  EXPECT_EQ(st.coordinator, 0) << cluster_->LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster_->LogTail();
}

}  // namespace
}  // namespace moe::e2e
