// End-to-end: a real moe-coordinator and `mpirun -np N moe-worker` on loopback (N = 2 and 3, the
// default model), driven through the public gRPC API and checked against the single-process
// engine computed here (moe::GenerateAll / moe::ScoreAll on a LocalCommunicator) and against the
// model's samples.json (transformers' greedy continuations).
//
// One cluster per rank count, started once for its suite (coordinator first, health checked
// before the workers start) and stopped by the suite's last test through the clean SIGTERM path.
// Every RPC has a deadline, every wait is bounded, and whatever is left is killed (by session) in
// TearDownTestSuite. Set MOE_E2E_KEEP_LOGS=1 to keep the processes' logs in /tmp/moe_e2e_*.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clients/cpp/generation_result.h"
#include "clients/cpp/grpc_status.h"
#include "clients/cpp/health_check.h"
#include "clients/cpp/service_list.h"
#include "common/json_util.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"
#include "worker/generation.h"

namespace moe::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

const std::string kModelDir = testing_ref::kDefaultModelDir;
constexpr int kGreedyTokens = 48;  // as samples.json
constexpr int kStreams = 32;
constexpr int kHeartbeatTimeoutS = 3;
const std::string kTokenizeText = "KING RICHARD III:\nNow is the winter of our discontent";

// Prompts of the concurrent streams: the three of samples.json first, then others.
const std::vector<std::string> kPrompts = {
    "ROMEO:", "First Citizen:\n", "KING RICHARD III:\nNow is the", "JULIET:\nO Romeo, Romeo!",
    "MENENIUS:\nWhat", "Second Citizen:\nWould you", "QUEEN ELIZABETH:\n", "To be, or not to be",
};

struct Expected {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> tokens;
  std::string text;
  std::string finish;  // "stop" | "length"
};

// Everything computed outside the cluster, once: the single-process engine's answers. Token ids
// and logprobs come from moe::Engine in this process (GenerateAll / ScoreAll on a
// LocalCommunicator). Text goes through moe-cli, a separate process, so this test's reference
// texts do not come from the code under test's tokenizer in the same process.
struct Reference {
  std::unique_ptr<testing_ref::LocalEngine> engine;
  json samples;                              // samples.json "greedy_samples"
  std::map<std::string, Expected> greedy;    // kPrompts, 48 greedy tokens
  Expected long_run;                         // the stream kept running through bad requests
  std::map<std::string, std::vector<int32_t>> ids_of;  // text -> token ids, by moe-cli

  static json Cli(const std::vector<std::string>& args) {
    testing_ref::CliRun run = testing_ref::RunCli(0, args);
    if (run.exit_code != 0 || run.result.is_null()) throw std::runtime_error("moe-cli failed: " + run.Describe());
    return run.result.contains("results") ? run.result["results"] : json::array({run.result});
  }

  // Token ids of texts, as the model's tokenizer gives them (moe-cli score reports them).
  void Tokenize(const std::vector<std::string>& texts) {
    std::vector<std::string> args = {"score", "--json"};
    for (const std::string& t : texts) args.insert(args.end(), {"--text", t});
    const json res = Cli(args);
    for (size_t i = 0; i < texts.size(); ++i) ids_of[texts[i]] = res[i]["token_ids"].get<std::vector<int32_t>>();
  }

  // Greedy generation: text and finish reason from moe-cli, token ids from both moe-cli and
  // this process's engine (they must agree).
  std::vector<Expected> Generate(const std::vector<std::string>& prompts, int64_t max_tokens, bool ignore_eos) {
    Tokenize(prompts);
    std::vector<std::string> args = {"generate", "--json", "--max-tokens", std::to_string(max_tokens)};
    if (ignore_eos) args.push_back("--ignore-eos");
    for (const std::string& p : prompts) args.insert(args.end(), {"--prompt", p});
    const json cli = Cli(args);
    std::vector<GenerateRequest> reqs;
    for (const std::string& p : prompts) {
      GenerateRequest r;
      r.prompt = ids_of.at(p);
      r.max_tokens = max_tokens;
      r.sampling.temperature = 0;
      r.ignore_eos = ignore_eos;
      reqs.push_back(r);
    }
    auto res = ValueOrThrow(GenerateAll(**engine, reqs));
    std::vector<Expected> out;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (cli[i]["token_ids"].get<std::vector<int32_t>>() != res[i].tokens) {
        throw std::runtime_error("moe-cli and the in-process engine disagree on " + json(prompts[i]).dump());
      }
      out.push_back({ids_of.at(prompts[i]), res[i].tokens, cli[i]["text"].get<std::string>(),
                     cli[i]["finish_reason"].get<std::string>()});
    }
    return out;
  }

  // log p(token i | tokens before it) for i >= 1.
  std::vector<float> Score(const std::vector<int32_t>& ids) {
    auto res = ValueOrThrow(ScoreAll(**engine, {ids}));
    return std::vector<float>(res[0].logprobs.begin() + 1, res[0].logprobs.end());
  }

  static Reference& Get() {
    static Reference* r = [] {
      auto* ref = new Reference;
      ref->engine = testing_ref::LoadLocalEngine(kModelDir);
      ref->samples = ValueOrThrow(ReadJsonFile(kModelDir + "/samples.json"))["greedy_samples"];
      std::vector<Expected> g = ref->Generate(kPrompts, kGreedyTokens, false);
      for (size_t i = 0; i < kPrompts.size(); ++i) ref->greedy[kPrompts[i]] = g[i];
      ref->long_run = ref->Generate({"First Citizen:\n"}, 400, true)[0];
      std::vector<std::string> texts = {kTokenizeText};
      for (const json& s : ref->samples) texts.push_back(s["greedy_text"].get<std::string>());
      ref->Tokenize(texts);
      return ref;
    }();
    return *r;
  }
};

moe::v1::GenerateRequest GreedyRequest(const std::string& prompt, uint32_t max_tokens) {
  moe::v1::GenerateRequest req;
  req.mutable_prompt()->set_text(prompt);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0);
  return req;
}

absl::StatusOr<moe::v1::Stats> GetStats(moe::v1::Inference::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(5));
  moe::v1::Stats stats;
  MOE_RETURN_IF_ERROR(client::FromGrpc(stub.GetStats(&ctx, moe::v1::GetStatsRequest(), &stats)));
  return stats;
}

int64_t KvBlocksUsed(const moe::v1::Stats& s) {
  int64_t used = 0;
  for (const auto& r : s.ranks()) used += r.kv_blocks_used();
  return used;
}

// --- the fixture: one cluster per rank count ------------------------------------------------------

template <typename RankCount>
class E2eCluster : public ::testing::Test {
 protected:
  static constexpr int kRanks = RankCount::value;

  static void SetUpTestSuite() {
    testing_ref::SetMpiTestEnvironment();
    Reference::Get();  // before the cluster starts, so the reference runs on idle cores
    // A short heartbeat timeout, so that the idle check below sees a rank that goes silent.
    cluster_ = std::make_unique<Cluster>(
        ClusterOptions{kRanks, kModelDir, {"--heartbeat-timeout-s", std::to_string(kHeartbeatTimeoutS)}, {}});
    setup_ = cluster_->StartCoordinator(Seconds(30));
    if (!setup_.ok()) return;
    // Before any worker exists: health must say NOT_SERVING and requests must be refused.
    auto health = client::CheckHealth(cluster_->channel(), "", milliseconds(5000));
    health_before_workers_ = health.ok() ? client::ServingStatusName(*health) : health.status().ToString();
    auto stub = moe::v1::Inference::NewStub(cluster_->channel());
    generate_before_workers_ = RunGenerate(*stub, GreedyRequest("ROMEO:", 4), 10).status;
    setup_ = cluster_->StartWorkers();
    if (!setup_.ok()) return;
    const auto t0 = Clock::now();
    setup_ = cluster_->WaitServing(Seconds(90));
    startup_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
  }

  static void TearDownTestSuite() {
    if (cluster_) cluster_->Stop(Seconds(10));
    cluster_.reset();
  }

  void SetUp() override {
    ASSERT_TRUE(cluster_ != nullptr);
    ASSERT_TRUE(setup_.ok()) << setup_;
    stub_ = moe::v1::Inference::NewStub(cluster_->channel());
  }

  void TearDown() override {
    if (HasFailure() && cluster_) std::fprintf(stderr, "%s", cluster_->LogTail().c_str());
  }

  static inline std::unique_ptr<Cluster> cluster_;
  static inline absl::Status setup_;
  static inline std::string health_before_workers_;
  static inline absl::Status generate_before_workers_;
  static inline double startup_seconds_ = 0;
  std::unique_ptr<moe::v1::Inference::Stub> stub_;
};

struct RankCountName {
  template <typename T>
  static std::string GetName(int) {
    return "np" + std::to_string(T::value);
  }
};

using RankCounts = ::testing::Types<std::integral_constant<int, 2>, std::integral_constant<int, 3>>;
TYPED_TEST_SUITE(E2eCluster, RankCounts, RankCountName);

// (e) Health and discovery.
TYPED_TEST(E2eCluster, HealthIsNotServingUntilWorkersLoadedThenServing) {
  EXPECT_EQ(this->health_before_workers_, "NOT_SERVING");
  EXPECT_EQ(this->generate_before_workers_.code(), absl::StatusCode::kUnavailable) << this->generate_before_workers_;
  auto health = client::CheckHealth(this->cluster_->channel(), "", milliseconds(5000));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(client::ServingStatusName(*health), "SERVING");
  std::fprintf(stderr, "[ info ] %d ranks: SERVING %.2f s after mpirun started\n", this->kRanks,
               this->startup_seconds_);

  // Idle ranks keep sending heartbeats: the cluster stays SERVING past the heartbeat timeout
  // before it has run anything.
  const auto idle_until = Clock::now() + std::chrono::milliseconds(kHeartbeatTimeoutS * 1000 + 1500);
  while (Clock::now() < idle_until) {
    auto h = client::CheckHealth(this->cluster_->channel(), "", milliseconds(5000));
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(client::ServingStatusName(*h), "SERVING") << "an idle cluster stopped serving\n"
                                                        << this->cluster_->LogTail();
    std::this_thread::sleep_for(milliseconds(250));
  }

  auto services = client::ListServices(this->cluster_->channel(), milliseconds(5000));
  ASSERT_TRUE(services.ok()) << services.status();
  for (const char* want : {"moe.v1.Inference", "grpc.health.v1.Health"}) {
    EXPECT_NE(std::find(services->begin(), services->end(), want), services->end())
        << want << " missing from " << json(*services).dump();
  }

  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(5));
  moe::v1::ClusterInfo info;
  ASSERT_TRUE(this->stub_->GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &info).ok());
  EXPECT_EQ(info.world_size(), this->kRanks);
  EXPECT_TRUE(info.serving());
  ASSERT_EQ(info.ranks_size(), this->kRanks);
  for (const auto& r : info.ranks()) {
    EXPECT_TRUE(r.loaded() && r.alive()) << "rank " << r.rank();
    EXPECT_GT(r.weight_bytes(), 0) << "rank " << r.rank();
    EXPECT_EQ(r.max_batch_tokens(), 2048) << "moe-worker's default --max-batch-tokens, rank " << r.rank();
    EXPECT_EQ(r.kv_block_size(), 16) << "rank " << r.rank();
    EXPECT_GT(r.kv_blocks_total(), 0) << "rank " << r.rank();
  }
  EXPECT_FALSE(json::parse(info.placement_json(), nullptr, false).is_discarded());
}

TYPED_TEST(E2eCluster, TokenizerAndModelInfoMatchTheModel) {
  Reference& ref = Reference::Get();
  const std::string& text = kTokenizeText;
  const std::vector<int32_t>& ids = ref.ids_of.at(text);
  grpc::ClientContext c1;
  c1.set_deadline(Deadline(5));
  moe::v1::TokenizeRequest treq;
  treq.set_text(text);
  moe::v1::TokenizeResponse tresp;
  ASSERT_TRUE(this->stub_->Tokenize(&c1, treq, &tresp).ok());
  EXPECT_EQ(std::vector<int32_t>(tresp.token_ids().begin(), tresp.token_ids().end()), ids);

  grpc::ClientContext c2;
  c2.set_deadline(Deadline(5));
  moe::v1::DetokenizeRequest dreq;
  for (int32_t id : ids) dreq.add_token_ids(id);
  moe::v1::DetokenizeResponse dresp;
  ASSERT_TRUE(this->stub_->Detokenize(&c2, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), text);

  grpc::ClientContext c3;
  c3.set_deadline(Deadline(5));
  moe::v1::ModelInfo mi;
  ASSERT_TRUE(this->stub_->GetModelInfo(&c3, moe::v1::GetModelInfoRequest(), &mi).ok());
  const ModelConfig& c = (*ref.engine)->config();
  EXPECT_EQ(mi.vocab_size(), c.vocab_size);
  EXPECT_EQ(mi.max_context(), c.max_position_embeddings);
  EXPECT_EQ(mi.num_layers(), c.num_layers);
  EXPECT_EQ(mi.num_experts(), c.num_experts);
  EXPECT_EQ(mi.experts_per_token(), c.experts_per_token);
}

// (a) 32 concurrent greedy streams get exactly the single-process engine's tokens and text.
TYPED_TEST(E2eCluster, ConcurrentGreedyStreamsMatchSingleProcessEngine) {
  Reference& ref = Reference::Get();
  // The reference itself is anchored to transformers: samples.json's three greedy continuations.
  for (const json& s : ref.samples) {
    const Expected& e = ref.greedy.at(s["prompt"].get<std::string>());
    ASSERT_EQ(e.prompt_ids, s["prompt_ids"].get<std::vector<int32_t>>());
    ASSERT_EQ(e.tokens, s["greedy_ids"].get<std::vector<int32_t>>());
    ASSERT_EQ(s["prompt"].get<std::string>() + e.text, s["greedy_text"].get<std::string>());
  }

  std::vector<moe::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    requests.push_back(GreedyRequest(kPrompts[i % kPrompts.size()], kGreedyTokens));
    if (i % 4 == 1) requests.back().mutable_sampling()->set_logprobs(3);
  }
  const auto t0 = Clock::now();
  const std::vector<StreamOutcome> outcomes = RunGenerateConcurrently(this->cluster_->public_address(), requests, 120);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::fprintf(stderr, "[ info ] %d ranks: %d concurrent streams of %d tokens in %.2f s\n", this->kRanks, kStreams,
               kGreedyTokens, secs);

  std::set<std::string> request_ids;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE("stream " + std::to_string(i) + " prompt " + json(kPrompts[i % kPrompts.size()]).dump());
    const StreamOutcome& o = outcomes[i];
    ASSERT_TRUE(o.status.ok()) << o.status;
    const Expected& e = ref.greedy.at(kPrompts[i % kPrompts.size()]);
    EXPECT_EQ(o.result.token_ids, e.tokens);
    EXPECT_EQ(o.result.text, e.text);
    EXPECT_EQ(client::FinishReasonName(o.result.finish_reason), e.finish);
    EXPECT_EQ(o.result.usage.prompt_tokens(), e.prompt_ids.size());
    EXPECT_EQ(o.result.usage.completion_tokens(), o.result.token_ids.size());
    EXPECT_FALSE(o.result.request_id.empty());
    request_ids.insert(o.result.request_id);
    if (i % 4 == 1) {
      // Log-probabilities of the sampled tokens: the engine's, scored over prompt + completion.
      ASSERT_EQ(o.result.logprobs.size(), o.result.token_ids.size());
      std::vector<int32_t> all = e.prompt_ids;
      all.insert(all.end(), e.tokens.begin(), e.tokens.end());
      const std::vector<float> lp = ref.Score(all);
      for (size_t t = 0; t < o.result.logprobs.size(); ++t) {
        const auto& got = o.result.logprobs[t];
        EXPECT_EQ(got.token_id(), e.tokens[t]);
        EXPECT_NEAR(got.logprob(), lp[e.prompt_ids.size() - 1 + t], 1e-4) << "token " << t;
        ASSERT_EQ(got.top_size(), 3);
        EXPECT_EQ(got.top(0).token_id(), e.tokens[t]) << "greedy: the sampled token is the most probable";
        EXPECT_GE(got.top(0).logprob(), got.top(1).logprob());
        EXPECT_GE(got.top(1).logprob(), got.top(2).logprob());
      }
    }
  }
  EXPECT_EQ(request_ids.size(), static_cast<size_t>(kStreams)) << "request ids must be unique";
}

// (b) Cancelling a client's stream frees the sequence's KV blocks on its rank.
TYPED_TEST(E2eCluster, ClientCancellationFreesKvBlocks) {
  moe::v1::GenerateRequest req = GreedyRequest("ROMEO:", 4000);
  req.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(60));
  auto reader = this->stub_->Generate(&ctx, req);
  moe::v1::GenerateResponse msg;
  client::GenerationResult got;
  while (got.token_ids.size() < 3 && reader->Read(&msg)) got.Add(msg);
  ASSERT_GE(got.token_ids.size(), 3u) << "the long generation ended early: " << reader->Finish().error_message();
  ASSERT_FALSE(got.finished());

  // While it runs, the coordinator counts it and (within a heartbeat) its rank holds KV blocks.
  int64_t used_while_running = 0;
  const auto until = Clock::now() + seconds(5);
  while (Clock::now() < until) {
    auto stats = GetStats(*this->stub_);
    ASSERT_TRUE(stats.ok()) << stats.status();
    used_while_running = KvBlocksUsed(*stats);
    if (used_while_running > 0) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_GT(used_while_running, 0) << "no KV blocks in use seen while the generation ran";

  ctx.TryCancel();
  while (reader->Read(&msg)) got.Add(msg);
  const grpc::Status end = reader->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED) << end.error_message();
  EXPECT_LT(got.token_ids.size(), 4000u);

  // Freed everywhere, within a bounded time (heartbeats come every second and after a finish).
  moe::v1::Stats last;
  const auto deadline = Clock::now() + seconds(15);
  bool freed = false;
  while (Clock::now() < deadline && !freed) {
    auto stats = GetStats(*this->stub_);
    ASSERT_TRUE(stats.ok()) << stats.status();
    last = *stats;
    freed = last.ranks_size() == this->kRanks && KvBlocksUsed(last) == 0 && last.requests_running() == 0;
    if (!freed) std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(freed) << "stats after cancellation: " << client::ProtoToJson(last).dump();
  for (const auto& r : last.ranks()) {
    EXPECT_EQ(r.kv_blocks_used(), 0) << "rank " << r.rank();
    EXPECT_GT(r.kv_blocks_total(), 0) << "rank " << r.rank();
  }
}

// (c) Score and ScoreRolling give the engine's log-probabilities.
TYPED_TEST(E2eCluster, ScoreAndScoreRollingMatchEngineLogprobs) {
  Reference& ref = Reference::Get();
  moe::v1::ScoreRequest req;
  for (const json& s : ref.samples) {
    auto* item = req.add_items();
    item->mutable_context()->set_text(s["prompt"].get<std::string>());
    for (int32_t id : s["greedy_ids"].get<std::vector<int32_t>>()) item->mutable_continuation()->mutable_token_ids()->add_ids(id);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(60));
  moe::v1::ScoreResponse resp;
  const grpc::Status st = this->stub_->Score(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.results_size(), static_cast<int>(ref.samples.size()));
  for (size_t i = 0; i < ref.samples.size(); ++i) {
    SCOPED_TRACE("sample " + std::to_string(i));
    const auto prompt = ref.samples[i]["prompt_ids"].get<std::vector<int32_t>>();
    const auto cont = ref.samples[i]["greedy_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), cont.begin(), cont.end());
    const std::vector<float> lp = ref.Score(all);
    const auto& r = resp.results(static_cast<int>(i));
    EXPECT_EQ(std::vector<int32_t>(r.continuation_token_ids().begin(), r.continuation_token_ids().end()), cont);
    ASSERT_EQ(r.logprobs_size(), static_cast<int>(cont.size()));
    double sum = 0;
    for (size_t t = 0; t < cont.size(); ++t) {
      const float want = lp[prompt.size() - 1 + t];
      EXPECT_NEAR(r.logprobs(static_cast<int>(t)), want, 1e-5) << "token " << t;
      sum += want;
    }
    EXPECT_NEAR(r.sum_logprob(), sum, 1e-4);
    EXPECT_TRUE(r.is_greedy()) << "samples.json continuations are greedy";
  }

  // Rolling: token ids, and a text the server tokenises itself.
  moe::v1::ScoreRollingRequest rreq;
  std::vector<std::vector<int32_t>> expected_ids;
  for (const json& s : ref.samples) {
    std::vector<int32_t> ids = s["prompt_ids"].get<std::vector<int32_t>>();
    for (int32_t id : s["greedy_ids"].get<std::vector<int32_t>>()) ids.push_back(id);
    rreq.add_texts()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
    expected_ids.push_back(ids);
  }
  const std::string text = ref.samples[1]["greedy_text"].get<std::string>();
  rreq.add_texts()->set_text(text);
  expected_ids.push_back(ref.ids_of.at(text));
  grpc::ClientContext rctx;
  rctx.set_deadline(Deadline(60));
  moe::v1::ScoreRollingResponse rresp;
  const grpc::Status rst = this->stub_->ScoreRolling(&rctx, rreq, &rresp);
  ASSERT_TRUE(rst.ok()) << rst.error_message();
  ASSERT_EQ(rresp.results_size(), static_cast<int>(expected_ids.size()));
  for (size_t i = 0; i < expected_ids.size(); ++i) {
    SCOPED_TRACE("rolling text " + std::to_string(i));
    const auto& r = rresp.results(static_cast<int>(i));
    EXPECT_EQ(std::vector<int32_t>(r.token_ids().begin(), r.token_ids().end()), expected_ids[i]);
    const std::vector<float> lp = ref.Score(expected_ids[i]);
    ASSERT_EQ(r.logprobs_size(), static_cast<int>(lp.size()));
    EXPECT_EQ(r.num_scored_tokens(), lp.size());
    double sum = 0;
    for (size_t t = 0; t < lp.size(); ++t) {
      EXPECT_NEAR(r.logprobs(static_cast<int>(t)), lp[t], 1e-5) << "token " << t + 1;
      sum += lp[t];
    }
    EXPECT_NEAR(r.sum_logprob(), sum, 1e-4);
  }
}

// (d) Every invalid request gets INVALID_ARGUMENT naming the field; a concurrent generation keeps
// streaming and ends with exactly the engine's tokens.
// prompt_logprobs (vLLM's): completion 0's stream carries, before or with its first token, each
// prompt token after the first with the reference engine's log-probability (ScoreAll), its rank
// (1 exactly where it is its position's first alternative) and two alternatives, most probable
// first, each with its text; completion 1 carries none, and the tokens are still the greedy ones.
TYPED_TEST(E2eCluster, PromptLogprobsAreTheReferencesOnCompletionZero) {
  Reference& ref = Reference::Get();
  for (const json& s : ref.samples) {
    const auto prompt = s["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = s["greedy_ids"].get<std::vector<int32_t>>();
    SCOPED_TRACE(s["prompt"].get<std::string>());
    moe::v1::GenerateRequest req = GreedyTokenRequest(prompt, 4);
    req.mutable_sampling()->set_n(2);
    req.mutable_sampling()->set_prompt_logprobs(2);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(60));
    auto reader = this->stub_->Generate(&ctx, req);
    moe::v1::GenerateResponse msg;
    std::vector<moe::v1::TokenLogprob> got;
    std::vector<int32_t> tokens0, tokens1;
    bool before_first_token = false;
    while (reader->Read(&msg)) {
      if (msg.index() == 0 && msg.prompt_logprobs_size() > 0) before_first_token = tokens0.empty();
      EXPECT_TRUE(msg.index() == 0 || msg.prompt_logprobs_size() == 0) << "completion " << msg.index();
      got.insert(got.end(), msg.prompt_logprobs().begin(), msg.prompt_logprobs().end());
      (msg.index() == 0 ? tokens0 : tokens1).insert((msg.index() == 0 ? tokens0 : tokens1).end(),
                                                    msg.token_ids().begin(), msg.token_ids().end());
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_TRUE(before_first_token);
    EXPECT_EQ(tokens0, std::vector<int32_t>(greedy.begin(), greedy.begin() + 4));
    EXPECT_EQ(tokens1, tokens0);
    const std::vector<float> want = ref.Score(prompt);
    ASSERT_EQ(got.size(), prompt.size() - 1);
    for (size_t i = 0; i < got.size(); ++i) {
      const moe::v1::TokenLogprob& lp = got[i];
      EXPECT_EQ(lp.token_id(), prompt[i + 1]);
      EXPECT_NEAR(lp.logprob(), want[i], 1e-5) << "prompt token " << i + 1;
      moe::v1::DetokenizeRequest dreq;
      dreq.add_token_ids(prompt[i + 1]);
      moe::v1::DetokenizeResponse dresp;
      grpc::ClientContext dctx;
      ASSERT_TRUE(this->stub_->Detokenize(&dctx, dreq, &dresp).ok());
      EXPECT_EQ(lp.text(), dresp.text()) << "prompt token " << i + 1;
      ASSERT_EQ(lp.top_size(), 2);
      EXPECT_GE(lp.top(0).logprob(), lp.top(1).logprob());
      EXPECT_GE(lp.top(0).logprob(), lp.logprob());
      EXPECT_EQ(lp.rank() == 1, lp.top(0).token_id() == lp.token_id()) << "prompt token " << i + 1;
      EXPECT_GE(lp.rank(), 1u);
    }
  }
  // A prompt of 2,500 tokens: its 2,499 logprobs in messages of at most 1,024 (far below gRPC's
  // 4 MiB), all before the first token, the reference's.
  {
    std::vector<int32_t> prompt;
    for (size_t i = 0; prompt.size() < 2500; ++i) {
      const auto ids = ref.samples[i % ref.samples.size()]["greedy_ids"].get<std::vector<int32_t>>();
      prompt.insert(prompt.end(), ids.begin(), ids.end());
    }
    prompt.resize(2500);
    moe::v1::GenerateRequest req = GreedyTokenRequest(prompt, 2);
    req.mutable_sampling()->set_prompt_logprobs(20);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(120));
    auto reader = this->stub_->Generate(&ctx, req);
    moe::v1::GenerateResponse msg;
    std::vector<float> got;
    int pieces = 0, tokens = 0;
    while (reader->Read(&msg)) {
      if (msg.prompt_logprobs_size() > 0) {
        ++pieces;
        EXPECT_LE(msg.prompt_logprobs_size(), 1024);
        EXPECT_EQ(tokens, 0) << "prompt logprobs after a token";
        EXPECT_EQ(msg.token_ids_size(), 0);
        for (const auto& lp : msg.prompt_logprobs()) got.push_back(lp.logprob());
      }
      tokens += msg.token_ids_size();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(pieces, 3);
    EXPECT_EQ(tokens, 2);
    const std::vector<float> want = ref.Score(prompt);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4) << "prompt token " << i + 1;
  }
  // Too many alternatives: refused naming the field.
  moe::v1::GenerateRequest bad = GreedyRequest("ROMEO:", 2);
  bad.mutable_sampling()->set_prompt_logprobs(21);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(30));
  moe::v1::GenerateResponse msg;
  auto reader = this->stub_->Generate(&ctx, bad);
  while (reader->Read(&msg)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("sampling.prompt_logprobs"), std::string::npos) << st.error_message();
}

TYPED_TEST(E2eCluster, InvalidRequestsAreRejectedWhileAGenerationStreams) {
  Reference& ref = Reference::Get();
  moe::v1::GenerateRequest long_req = GreedyRequest("First Citizen:\n", 400);
  long_req.mutable_sampling()->set_ignore_eos(true);
  std::atomic<int> long_tokens{0};
  std::atomic<bool> long_done{false};
  StreamOutcome long_out;
  std::thread long_thread([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(120));
    auto reader = this->stub_->Generate(&ctx, long_req);
    moe::v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      long_out.result.Add(msg);
      long_tokens = static_cast<int>(long_out.result.token_ids.size());
    }
    long_out.status = client::FromGrpc(reader->Finish());
    long_done = true;
  });
  // Send the bad requests once the long generation is under way.
  const auto until = Clock::now() + seconds(30);
  while (long_tokens == 0 && !long_done && Clock::now() < until) std::this_thread::sleep_for(milliseconds(5));
  const int tokens_before = long_tokens;

  struct Bad {
    std::string what;
    moe::v1::GenerateRequest req;
    std::string field;  // the message must name it
  };
  std::vector<Bad> bad;
  auto add = [&](std::string what, std::string field, auto edit) {
    moe::v1::GenerateRequest r = GreedyRequest("ROMEO:", 8);
    edit(r);
    bad.push_back({std::move(what), std::move(r), std::move(field)});
  };
  add("empty prompt text", "prompt", [](auto& r) { r.mutable_prompt()->set_text(""); });
  add("prompt with neither text nor ids", "prompt", [](auto& r) { r.mutable_prompt()->Clear(); });
  add("no prompt at all", "prompt", [](auto& r) { r.clear_prompt(); });
  add("empty token ids", "prompt", [](auto& r) { r.mutable_prompt()->mutable_token_ids()->Clear(); });
  add("token id above the vocabulary", "token_ids", [](auto& r) {
    auto* ids = r.mutable_prompt()->mutable_token_ids();
    ids->add_ids(870);
    ids->add_ids(2048);
  });
  add("negative token id", "token_ids", [](auto& r) { r.mutable_prompt()->mutable_token_ids()->add_ids(-1); });
  add("prompt + max_tokens beyond the context", "max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(4095); });
  add("max_tokens 0", "max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(0); });
  add("temperature < 0", "temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); });
  add("temperature NaN", "temperature", [](auto& r) { r.mutable_sampling()->set_temperature(NAN); });
  add("top_p 0", "top_p", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); });
  add("top_p 1.5", "top_p", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); });
  add("top_k < 0", "top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-1); });
  add("logprobs > 20", "logprobs", [](auto& r) { r.mutable_sampling()->set_logprobs(21); });
  add("stop token id outside the vocabulary", "stop_token_ids", [](auto& r) { r.mutable_sampling()->add_stop_token_ids(99999); });
  add("empty stop string", "stop", [](auto& r) { r.mutable_sampling()->add_stop(""); });

  // Spread the bad requests over the long generation: each waits (bounded) for a few more of its
  // tokens, so they really arrive while it streams.
  int next_mark = tokens_before;
  auto interleave = [&] {
    next_mark += 8;
    const auto wait_until = Clock::now() + seconds(5);
    while (long_tokens < next_mark && !long_done && Clock::now() < wait_until) {
      std::this_thread::sleep_for(milliseconds(1));
    }
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    interleave();
    const StreamOutcome o = RunGenerate(*this->stub_, b.req, 10);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument) << o.status;
    EXPECT_NE(std::string(o.status.message()).find(b.field), std::string::npos)
        << "the message should name " << b.field << ": " << o.status.message();
    EXPECT_TRUE(o.result.token_ids.empty());
  }

  // Scoring requests: a text-vs-ids mix-up (ids outside the vocabulary in place of text), missing
  // parts, and empty batches.
  auto score_error = [&](const moe::v1::ScoreRequest& req) {
    interleave();
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::ScoreResponse resp;
    return client::FromGrpc(this->stub_->Score(&ctx, req, &resp));
  };
  {
    moe::v1::ScoreRequest req;
    absl::Status s = score_error(req);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find("items"), std::string::npos) << s;
  }
  {
    moe::v1::ScoreRequest req;
    req.add_items()->mutable_context()->set_text("ROMEO:");
    absl::Status s = score_error(req);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find("continuation"), std::string::npos) << s;
  }
  {
    moe::v1::ScoreRequest req;
    auto* item = req.add_items();
    item->mutable_context()->mutable_token_ids()->add_ids(5000);
    item->mutable_continuation()->set_text(" Then");
    absl::Status s = score_error(req);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find("context"), std::string::npos) << s;
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::ScoreRollingRequest req;
    moe::v1::ScoreRollingResponse resp;
    absl::Status s = client::FromGrpc(this->stub_->ScoreRolling(&ctx, req, &resp));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find("texts"), std::string::npos) << s;
  }
  const int tokens_after = long_tokens;

  long_thread.join();
  ASSERT_TRUE(long_out.status.ok()) << long_out.status;
  EXPECT_EQ(long_out.result.token_ids, ref.long_run.tokens);
  EXPECT_EQ(long_out.result.text, ref.long_run.text);
  EXPECT_EQ(client::FinishReasonName(long_out.result.finish_reason), "length");
  std::fprintf(stderr, "[ info ] long generation: %d tokens before the bad requests, %d after them, %zu at the end\n",
               tokens_before, tokens_after, long_out.result.token_ids.size());
}

// (f) The Prometheus endpoint serves the named metrics, and the token counter grows.
TYPED_TEST(E2eCluster, PrometheusEndpointServesMetrics) {
  ASSERT_GT(this->cluster_->ports().metrics_port, 0);
  auto before = HttpGet(this->cluster_->ports().metrics_port, "/metrics", Seconds(5));
  ASSERT_TRUE(before.ok()) << before.status();
  for (const char* name : {"moe_generation_tokens_total", "moe_prompt_tokens_total", "moe_num_requests_running",
                           "moe_num_requests_waiting", "moe_kv_cache_usage_ratio", "moe_request_success_total",
                           "moe_time_to_first_token_seconds_count", "moe_inter_token_latency_seconds_count",
                           "moe_e2e_request_latency_seconds_count"}) {
    EXPECT_TRUE(MetricSum(*before, name).has_value()) << name << " missing from:\n" << before->substr(0, 3000);
  }
  const double tokens_before = MetricSum(*before, "moe_generation_tokens_total").value_or(-1);

  const StreamOutcome o = RunGenerate(*this->stub_, GreedyRequest("JULIET:", 8), 30);
  ASSERT_TRUE(o.status.ok()) << o.status;
  auto after = HttpGet(this->cluster_->ports().metrics_port, "/metrics", Seconds(5));
  ASSERT_TRUE(after.ok()) << after.status();
  const double tokens_after = MetricSum(*after, "moe_generation_tokens_total").value_or(-1);
  EXPECT_GE(tokens_after, tokens_before + static_cast<double>(o.result.token_ids.size()));
  EXPECT_GT(MetricSum(*after, "moe_request_success_total").value_or(0), 0);
}

// Last of the suite: SIGTERM to the coordinator drains, sends Shutdown to every rank, and every
// process exits with status 0, leaving nothing behind.
TYPED_TEST(E2eCluster, ZzShutsDownCleanlyOnSigterm) {
  const auto t0 = Clock::now();
  const Cluster::ExitStatus st = this->cluster_->Stop(Seconds(30));
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::fprintf(stderr, "[ info ] %d ranks: shut down in %.2f s\n", this->kRanks, secs);
  const std::string logs = this->cluster_->LogTail();
  EXPECT_EQ(st.coordinator, std::optional<int>(0)) << logs;
  EXPECT_EQ(st.mpirun, std::optional<int>(0)) << logs;
  EXPECT_TRUE(this->cluster_->LeftoverProcesses().empty());
}

}  // namespace
}  // namespace moe::e2e
