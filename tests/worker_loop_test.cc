// The worker's serving loop without a coordinator: driven through its Inbox and a RecordingOutbox
// in one process (LocalCommunicator) on the golden tiny model. Generated tokens must be
// transformers' greedy continuations (expected.json), whatever the batch around them; scores must
// be ScoreAll's on a separate engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/engine_fixture.h"
#include "tests/support/penalty_cases.h"
#include "tests/support/reference_forward.h"
#include "worker/generation.h"
#include "worker/json_grammar.h"
#include "worker/json_schema.h"
#include "worker/kv_blocks.h"
#include "worker/sampler.h"
#include "worker/server/batch_planner.h"
#include "worker/server/inbox.h"
#include "worker/server/recording_outbox.h"
#include "worker/server/serving_loop.h"

namespace moe::testing_ref {
namespace {

using moe::v1::Assign;
using moe::v1::Finished;

constexpr int kMaxIterations = 2000;  // bounds every loop below; the longest test needs ~200

// An engine on the golden model with a serving loop over it.
struct LoopHarness {
  std::unique_ptr<LocalEngine> engine;
  Inbox inbox;
  RecordingOutbox out;
  std::unique_ptr<ServingLoop> loop;

  explicit LoopHarness(EngineOptions eo = {}, ServingLoopOptions lo = {}) {
    engine = LoadLocalEngine(kGoldenDir, eo);
    lo.heartbeat_interval = std::chrono::hours(1);  // heartbeats only when a sequence finishes
    lo.idle_wait_min = std::chrono::milliseconds(0);
    lo.idle_wait_max = std::chrono::milliseconds(1);
    loop = std::make_unique<ServingLoop>(**engine, inbox, out, lo);
  }

  void Push(const Assign& a) {
    moe::v1::CoordinatorMessage m;
    *m.mutable_assign() = a;
    inbox.Push(std::move(m));
  }
  void Cancel(uint64_t id) {
    moe::v1::CoordinatorMessage m;
    m.mutable_cancel()->set_seq_id(id);
    inbox.Push(std::move(m));
  }
  void Shutdown() {
    moe::v1::CoordinatorMessage m;
    m.mutable_shutdown();
    inbox.Push(std::move(m));
  }
  void Run(int iterations) {
    for (int i = 0; i < iterations; ++i) ASSERT_TRUE(loop->RunOnce());
  }
  // Runs until every assigned sequence has finished (bounded).
  void RunUntilDone() {
    for (int i = 0; i < kMaxIterations; ++i) {
      ASSERT_TRUE(loop->RunOnce());
      if (loop->num_sequences() == 0 && inbox.Drain().empty()) return;
    }
    FAIL() << "sequences still running after " << kMaxIterations << " iterations";
  }
};

Assign Greedy(uint64_t id, const std::vector<int32_t>& prompt, uint32_t max_tokens) {
  Assign a;
  a.set_seq_id(id);
  a.mutable_prompt()->Add(prompt.begin(), prompt.end());
  a.set_kind(Assign::KIND_GENERATE);
  a.set_max_tokens(max_tokens);
  a.set_temperature(0.0f);
  a.set_top_p(1.0f);
  return a;
}

Assign Score(uint64_t id, const std::vector<int32_t>& tokens) {
  Assign a;
  a.set_seq_id(id);
  a.mutable_prompt()->Add(tokens.begin(), tokens.end());
  a.set_kind(Assign::KIND_SCORE);
  a.set_want_greedy(true);
  return a;
}

class WorkerLoopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { golden_ = new Golden(Golden::Load()); }
  static void TearDownTestSuite() { delete golden_; }
  static std::vector<int32_t> Prompt(size_t p) { return golden_->prompt(p); }
  static std::vector<int32_t> Greedy24(size_t p) { return golden_->greedy(p); }
  // Prompts that start alike: golden prompt `shared`, then the first `tail_tokens` of golden prompt
  // t, for each t of `tails`.
  static std::vector<std::vector<int32_t>> SharedStartPrompts(size_t shared, std::initializer_list<size_t> tails,
                                                              size_t tail_tokens) {
    std::vector<std::vector<int32_t>> prompts;
    for (size_t t : tails) {
      prompts.push_back(Prompt(shared));
      const std::vector<int32_t> tail = Prompt(t);
      prompts.back().insert(prompts.back().end(), tail.begin(), tail.begin() + std::min(tail.size(), tail_tokens));
    }
    return prompts;
  }
  static Golden* golden_;
};
Golden* WorkerLoopTest::golden_ = nullptr;

// ----------------------------------------------------------------------------------------------
// Admission and batch shape, as plain bookkeeping.

// Admits waiting sequences as the serving loop does: each admitted one joins the allocator (with
// its cached prefix attached when `prompts` has one for it) before the next is considered.
std::vector<uint64_t> AdmitAll(BatchPlanner& p, KvBlockAllocator& kv,
                               const std::map<uint64_t, std::vector<int32_t>>& prompts = {}) {
  std::vector<uint64_t> admitted;
  while (const std::optional<uint64_t> id = p.next_waiting()) {
    const auto prompt = prompts.find(*id);
    const std::span<const int32_t> tokens = prompt == prompts.end() ? std::span<const int32_t>() : prompt->second;
    if (!p.AdmitNext(kv.LookupCachedPrefix(tokens).in_use)) break;
    EXPECT_TRUE(kv.AddSequence(static_cast<int64_t>(*id)).ok());
    kv.AttachCachedPrefix(static_cast<int64_t>(*id), tokens);
    admitted.push_back(*id);
  }
  return admitted;
}

void Forget(BatchPlanner& p, KvBlockAllocator& kv, uint64_t id) {
  p.Remove(id);
  kv.FreeSequence(static_cast<int64_t>(id));
}

// Two runs' logprobs of the same tokens: equal up to the last bits a row's batch neighbours can move
// (a row computed in another step's batch goes through other BLAS blockings).
void ExpectLogprobsNear(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "token " << i;
}

TEST(BatchPlannerTest, ReserveAdmitsInOrderWhileTheWorstCaseFits) {
  KvBlockAllocator kv(/*block_size=*/16, /*num_blocks=*/8);
  BatchPlanner p(kv, KvAdmission::kReserve);
  p.Enqueue(1, 88, 64);  // 6 blocks
  p.Enqueue(2, 29, 5);   // 2 blocks
  p.Enqueue(3, 41, 17);  // 3 blocks: must wait
  p.Enqueue(4, 1, 1);    // 1 block: fits, but does not overtake 3
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(p.committed_blocks(), 8);
  EXPECT_EQ(p.num_waiting(), 2u);
  // Blocks taken by a step move from "to come" to "in use": the commitment does not change.
  ASSERT_TRUE(kv.Reserve(1, 40).ok());
  EXPECT_EQ(kv.used_blocks(), 3);
  EXPECT_EQ(p.committed_blocks(), 8);
  Forget(p, kv, 2);
  EXPECT_TRUE(AdmitAll(p, kv).empty()) << "3 needs 3 blocks, 2 are free";
  Forget(p, kv, 1);
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{3, 4}));
  Forget(p, kv, 4);
  p.Remove(99);  // unknown: ignored
  EXPECT_EQ(p.running(), (std::vector<uint64_t>{3}));
  EXPECT_EQ(p.committed_blocks(), 3);
  EXPECT_FALSE(p.EverFits(8 * 16 + 1));
  EXPECT_TRUE(p.EverFits(8 * 16));
}

// Prefix caching: blocks that running sequences share count once, so sequences starting with the
// same prompt run together where separate copies would not fit, and the shared blocks stay counted
// while any sequence holds them (here after the sequence that computed them has left).
TEST(BatchPlannerTest, BlocksSharedThroughThePrefixCacheCountOnce) {
  KvBlockAllocator kv(/*block_size=*/4, /*num_blocks=*/10);
  kv.EnablePrefixCache();
  BatchPlanner p(kv, KvAdmission::kReserve);
  std::vector<int32_t> shared(13);  // 3 whole blocks attachable (the last token is computed)
  for (size_t i = 0; i < shared.size(); ++i) shared[i] = static_cast<int32_t>(100 + i);
  const std::vector<int32_t> other = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  const std::map<uint64_t, std::vector<int32_t>> prompts = {{1, shared}, {2, shared}, {3, shared}, {4, other}, {5, other}};
  const int64_t worst = 16;  // 13 + 3 generated: 4 blocks each

  p.Enqueue(1, worst, 13);
  EXPECT_EQ(AdmitAll(p, kv, prompts), (std::vector<uint64_t>{1}));
  ASSERT_TRUE(kv.Reserve(1, 13).ok());  // its prompt is computed: 3 whole blocks registered
  kv.Append(1, shared);
  EXPECT_EQ(p.committed_blocks(), 4);

  for (uint64_t id : {2, 3, 4, 5}) p.Enqueue(id, worst, 13);
  // 2 and 3 share 1's three blocks and need one more each (4 + 1 + 1); 4 needs all four of its own
  // (10); 5 would make 14. Without sharing 3 would not have fitted (4 + 4 + 4 > 10).
  EXPECT_EQ(AdmitAll(p, kv, prompts), (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_EQ(kv.blocks(2).size(), 3u);
  EXPECT_EQ(p.committed_blocks(), 10);

  // 1 leaves: only its fourth block is freed, the shared three are still held by 2 and 3.
  Forget(p, kv, 1);
  EXPECT_EQ(p.committed_blocks(), 9);
  EXPECT_TRUE(AdmitAll(p, kv, prompts).empty()) << "5 needs 4 blocks, 1 is uncommitted";
  // Once 2 and 3 leave too, the shared blocks stay cached but count as free.
  Forget(p, kv, 2);
  Forget(p, kv, 3);
  EXPECT_EQ(kv.cached_free_blocks(), 3);
  EXPECT_EQ(p.committed_blocks(), 4);
  EXPECT_EQ(AdmitAll(p, kv, prompts), (std::vector<uint64_t>{5}));
  EXPECT_EQ(p.committed_blocks(), 8);
}

// On demand: a sequence enters once what it computes now (+ one position) fits with a watermark
// beside what the running ones need now; when a step's blocks do not fit, the newest running one
// goes back to the front of the FIFO, and readmitted it needs its whole context again.
TEST(BatchPlannerTest, OnDemandAdmitsWhatFitsNowAndPreemptsTheNewest) {
  KvBlockAllocator kv(/*block_size=*/16, /*num_blocks=*/8);
  BatchPlanner p(kv);
  EXPECT_EQ(p.mode(), KvAdmission::kOnDemand);
  EXPECT_EQ(p.watermark_blocks(), 1);
  p.Enqueue(1, 88, 64);   // 5 blocks now (65 positions), 6 at worst
  p.Enqueue(2, 29, 5);    // 1 now
  p.Enqueue(3, 120, 1);   // 1 now, 8 at worst: no worst-case reservation would run it beside 1
  p.Enqueue(4, 20, 20);   // 2 now: 5 + 1 + 1 + 2 + the watermark > 8, waits
  p.Enqueue(5, 1, 1);     // 1: fits, but does not overtake 4
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(p.committed_blocks(), 7);
  EXPECT_EQ(p.num_waiting(), 2u);

  // Their prompts computed, and a step of one token each needs one more block (1's fifth).
  const std::vector<int32_t> tokens(64, 7);
  auto write = [&](int64_t id, int64_t n) {
    ASSERT_TRUE(kv.Reserve(id, kv.length(id) + n).ok());
    kv.Append(id, std::span<const int32_t>(tokens.data(), static_cast<size_t>(n)));
  };
  write(1, 64);
  write(2, 5);
  write(3, 1);
  EXPECT_EQ(kv.used_blocks(), 6);
  EXPECT_EQ(p.committed_blocks(), 7);
  EXPECT_EQ(p.StepBlocks({1, 1, 1}), 1);
  EXPECT_EQ(p.StepBlocks({0, 1, 1}), 0);
  // 3 grows to 32 positions: the cache is full, and 3's next token needs a third block.
  write(1, 1);
  write(3, 31);
  EXPECT_EQ(kv.free_blocks(), 0);
  EXPECT_EQ(p.StepBlocks({1, 1, 1}), 1);
  ASSERT_EQ(p.Victim(), 3u);
  p.Preempt(3, 33);  // 32 positions written + its last token
  kv.FreeSequence(3);
  EXPECT_EQ(p.running(), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(p.StepBlocks({1, 1}), 0);
  EXPECT_EQ(p.next_waiting(), std::optional<uint64_t>(3));
  // Readmitting 3 takes 3 blocks (34 positions): 6 committed + 3 + the watermark > 8.
  EXPECT_TRUE(AdmitAll(p, kv).empty());
  Forget(p, kv, 1);
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{3, 4, 5}));
  EXPECT_EQ(p.committed_blocks(), 1 + 3 + 2 + 1);
  // Alone, a sequence is admitted whenever it fits at all, the watermark aside.
  KvBlockAllocator small(/*block_size=*/16, /*num_blocks=*/2);
  BatchPlanner q(small);
  q.Enqueue(9, 32, 31);
  EXPECT_EQ(AdmitAll(q, small), (std::vector<uint64_t>{9}));
}

// Priorities: the queue is ordered by priority, then arrival; the victim is the highest value, the
// last admitted of those; a preempted sequence waits ahead of the others of its priority.
TEST(BatchPlannerTest, PrioritiesOrderTheQueueAndChooseTheVictim) {
  KvBlockAllocator kv(/*block_size=*/16, /*num_blocks=*/64);
  BatchPlanner p(kv);
  p.Enqueue(1, 16, 8, /*priority=*/0);
  p.Enqueue(2, 16, 8, 3);
  p.Enqueue(3, 16, 8, -2);
  p.Enqueue(4, 16, 8, 3);
  p.Enqueue(5, 16, 8, 0);
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{3, 1, 5, 2, 4}));
  EXPECT_EQ(p.Victim(), 4u) << "priority 3, admitted after 2";
  p.Preempt(4, 8);
  kv.FreeSequence(4);
  EXPECT_EQ(p.Victim(), 2u);
  p.Preempt(2, 8);
  kv.FreeSequence(2);
  EXPECT_EQ(p.Victim(), 5u) << "priority 0, admitted after 1";
  p.Enqueue(6, 16, 8, 3);
  EXPECT_EQ(p.next_waiting(), std::optional<uint64_t>(2)) << "2 was admitted before 4: it goes first again";
  EXPECT_EQ(AdmitAll(p, kv), (std::vector<uint64_t>{2, 4, 6}));
  Forget(p, kv, 3);
  EXPECT_EQ(p.Victim(), 6u);
}

TEST(BatchPlannerTest, DecodesFirstThenPromptChunksWithinTheBudget) {
  EXPECT_EQ(PlanStepTokens({0, 100, 0, 7}, 16), (std::vector<int64_t>{1, 14, 1, 0}));
  EXPECT_EQ(PlanStepTokens({5, 100, 0}, 2048), (std::vector<int64_t>{5, 100, 1}));
  EXPECT_EQ(PlanStepTokens({0, 0, 0}, 2), (std::vector<int64_t>{1, 1, 0}));
  EXPECT_EQ(PlanStepTokens({}, 16), (std::vector<int64_t>{}));
}

// ----------------------------------------------------------------------------------------------
// Generation.

// Five prompts assigned at different steps, some while others decode: every one yields exactly the
// golden greedy tokens, and the logprob of each token is the model's (ScoreAll of prompt + tokens).
TEST_F(WorkerLoopTest, StaggeredGreedySequencesGiveTheGoldenTokens) {
  LoopHarness h;
  h.Push(Greedy(100, Prompt(0), 24));
  h.Push(Greedy(101, Prompt(1), 24));
  h.Run(3);
  Assign third = Greedy(102, Prompt(2), 24);
  third.set_top_logprobs(3);
  h.Push(third);
  h.Run(5);
  h.Push(Greedy(103, Prompt(3), 24));
  h.Run(1);
  h.Push(Greedy(104, Prompt(4), 24));
  h.RunUntilDone();

  auto seqs = h.out.BySequence();
  for (size_t p = 0; p < 5; ++p) {
    const RecordingOutbox::Sequence& s = seqs[100 + p];
    EXPECT_EQ(s.tokens, Greedy24(p)) << "prompt " << p;
    ASSERT_TRUE(s.finished.has_value()) << "prompt " << p;
    EXPECT_EQ(s.finished->reason(), Finished::REASON_LENGTH) << "prompt " << p;
    EXPECT_EQ(s.logprobs.size(), s.tokens.size());
  }
  // They shared steps: sequence 102 started while 100 was still decoding.
  EXPECT_LT(seqs[102].first_token_index, seqs[100].finished_index);
  EXPECT_LT(seqs[104].first_token_index, seqs[102].finished_index);

  // Logprobs against ScoreAll on another engine.
  auto ref = LoadLocalEngine(kGoldenDir);
  for (size_t p = 0; p < 5; ++p) {
    std::vector<int32_t> full = Prompt(p);
    const std::vector<int32_t> continuation = Greedy24(p);
    full.insert(full.end(), continuation.begin(), continuation.end());
    auto want = ScoreAll(**ref, {full}).value();
    const size_t n = Prompt(p).size();
    for (size_t t = 0; t < seqs[100 + p].logprobs.size(); ++t) {
      EXPECT_NEAR(seqs[100 + p].logprobs[t], want[0].logprobs[n + t], 1e-4) << "prompt " << p << " token " << t;
    }
  }
  // Top alternatives of 102: three, most probable first, led by the greedy token itself; the float64
  // reference's three most probable tokens and their log-softmax values, wherever its ranks are
  // apart by more than float32 noise.
  const RecordingOutbox::Sequence& s = seqs[102];
  ASSERT_EQ(s.top.size(), s.tokens.size());
  std::vector<int32_t> full = Prompt(2);
  full.insert(full.end(), s.tokens.begin(), s.tokens.end());
  auto ckpt = Checkpoint::Open(kGoldenDir).value();
  const ReferenceOutput fwd = ReferenceForward((*h.engine)->config(), *ckpt, full).value();
  int checked = 0;
  for (size_t t = 0; t < s.top.size(); ++t) {
    ASSERT_EQ(s.top[t].alternatives_size(), 3);
    EXPECT_EQ(s.top[t].alternatives(0).token_id(), s.tokens[t]);
    EXPECT_FLOAT_EQ(s.top[t].alternatives(0).logprob(), s.logprobs[t]);
    EXPECT_GE(s.top[t].alternatives(0).logprob(), s.top[t].alternatives(1).logprob());
    EXPECT_GE(s.top[t].alternatives(1).logprob(), s.top[t].alternatives(2).logprob());
    const int64_t row = static_cast<int64_t>(Prompt(2).size() + t) - 1;
    std::vector<std::pair<double, int32_t>> ranked;
    double max_logit = -1e300;
    for (int32_t v = 0; v < fwd.vocab; ++v) {
      ranked.emplace_back(fwd.logit(row, v), v);
      max_logit = std::max(max_logit, fwd.logit(row, v));
    }
    std::partial_sort(ranked.begin(), ranked.begin() + 4, ranked.end(), std::greater<>());
    if (ranked[0].first - ranked[1].first < 1e-3 || ranked[1].first - ranked[2].first < 1e-3 ||
        ranked[2].first - ranked[3].first < 1e-3) {
      continue;
    }
    double sum = 0;
    for (int32_t v = 0; v < fwd.vocab; ++v) sum += std::exp(fwd.logit(row, v) - max_logit);
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(s.top[t].alternatives(j).token_id(), ranked[j].second) << "token " << t << " alternative " << j;
      EXPECT_NEAR(s.top[t].alternatives(j).logprob(), ranked[j].first - max_logit - std::log(sum), 1e-3)
          << "token " << t << " alternative " << j;
    }
    ++checked;
  }
  EXPECT_GE(checked, 12);
  EXPECT_TRUE(seqs[100].top.empty()) << "no alternatives unless asked";
  EXPECT_EQ(h.out.LastStats()->kv_blocks_used(), 0);
  EXPECT_EQ((*h.engine)->kv_cache().used_blocks(), 0);
}

// Sampled tokens follow SampleToken(logits, params, step) like GenerateAll (and so moe-cli).
TEST_F(WorkerLoopTest, SeededSamplingEqualsGenerateAll) {
  LoopHarness h;
  Assign a = Greedy(7, Prompt(2), 20);
  a.set_temperature(0.9f);
  a.set_top_k(50);
  a.set_top_p(0.95f);
  a.set_seed(1234);
  h.Push(a);
  h.Push(Greedy(8, Prompt(1), 10));
  h.RunUntilDone();

  auto ref = LoadLocalEngine(kGoldenDir);
  GenerateRequest req;
  req.prompt = Prompt(2);
  req.max_tokens = 20;
  req.sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 1234};
  auto want = GenerateAll(**ref, {req}).value();
  EXPECT_EQ(h.out.BySequence()[7].tokens, want[0].tokens);
}

TEST_F(WorkerLoopTest, StopTokenIdsAndMaxTokens) {
  LoopHarness h;
  const std::vector<int32_t> g = Greedy24(1);
  Assign stop = Greedy(1, Prompt(1), 24);
  stop.add_stop_token_ids(g[5]);
  stop.add_stop_token_ids(1023 == g[5] ? 1022 : 1023);
  h.Push(stop);
  h.Push(Greedy(2, Prompt(1), 5));
  Assign never = Greedy(3, Prompt(1), 24);
  never.add_stop_token_ids(2);  // EOS: not among the golden tokens
  h.Push(never);
  h.RunUntilDone();

  auto seqs = h.out.BySequence();
  const size_t first_stop = static_cast<size_t>(std::find(g.begin(), g.end(), g[5]) - g.begin());
  EXPECT_EQ(seqs[1].tokens, std::vector<int32_t>(g.begin(), g.begin() + first_stop + 1));
  EXPECT_EQ(seqs[1].finished->reason(), Finished::REASON_STOP);
  EXPECT_EQ(seqs[2].tokens, std::vector<int32_t>(g.begin(), g.begin() + 5));
  EXPECT_EQ(seqs[2].finished->reason(), Finished::REASON_LENGTH);
  EXPECT_EQ(seqs[3].tokens, g);
  EXPECT_EQ(seqs[3].finished->reason(), Finished::REASON_LENGTH);
}

// A vocabulary for the tiny model (1,024 ids, EOS 2): ids 0-2 without text, 3-258 the 256 bytes,
// the rest JSON-ish fragments and words in turn.
std::vector<std::string> TinyJsonVocabulary() {
  static const char* const kFragments[] = {"{", "}", "\"", "\":", " ", "\n", "ab", "true", "1", ",", "{\"",
                                           "\"}", "[", "]", "null", "x", " the", "\": \"", "-2.5", "e"};
  std::vector<std::string> texts(1024);
  for (int b = 0; b < 256; ++b) texts[static_cast<size_t>(3 + b)] = std::string(1, static_cast<char>(b));
  for (size_t id = 259; id < texts.size(); ++id) texts[id] = kFragments[(id - 259) % std::size(kFragments)];
  return texts;
}

// response_format json_object through the loop: greedy, each token is the argmax of the reference
// engine's row over the tokens whose whole text the grammar accepts (checked one by one, no trie),
// EOS only once the object is closed; the text then parses as an object (nlohmann). Greedy and
// sampled requests also run beside plain ones, which keep the golden tokens; asking for top
// alternatives changes no token. Without the
// vocabulary (a model with no tokenizer) such a request ends with an error naming json_object.
TEST_F(WorkerLoopTest, JsonObjectTokensAreTheArgmaxOverTokensThatKeepAnObject) {
  const std::vector<std::string> texts = TinyJsonVocabulary();
  ServingLoopOptions lo;
  lo.vocabulary = std::make_shared<const TokenTextTrie>(texts);
  LoopHarness h({}, lo);
  const uint32_t kMax = 60;
  for (uint64_t p = 0; p < 3; ++p) {
    Assign a = Greedy(p + 1, Prompt(p), kMax);
    a.set_json_object(true);
    h.Push(a);
    Assign sampled = a;
    sampled.set_seq_id(p + 11);
    sampled.set_temperature(1.0f);
    sampled.set_seed(p);
    h.Push(sampled);
    // The same two with top alternatives, which change no token.
    for (const Assign& plain : {a, sampled}) {
      Assign with_top = plain;
      with_top.set_seq_id(plain.seq_id() + 30);
      with_top.set_top_logprobs(1);
      h.Push(with_top);
    }
  }
  h.Push(Greedy(21, Prompt(1), 24));
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  EXPECT_EQ(seqs[21].tokens, Greedy24(1));
  for (uint64_t id : {1, 2, 3, 11, 12, 13}) {
    SCOPED_TRACE("sequence " + std::to_string(id));
    EXPECT_EQ(seqs[id].tokens, seqs[id + 30].tokens);
    ExpectLogprobsNear(seqs[id].logprobs, seqs[id + 30].logprobs);
    ASSERT_TRUE(seqs[id].finished.has_value() && seqs[id + 30].finished.has_value());
    EXPECT_EQ(seqs[id].finished->reason(), seqs[id + 30].finished->reason());
  }

  auto ref = LoadLocalEngine(kGoldenDir);
  const int64_t V = (*ref)->config().vocab_size;
  int closed = 0;
  for (uint64_t p = 0; p < 3; ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    std::vector<int32_t> want;
    const JsonSchema any_object = JsonSchema::AnyObject();
    JsonGrammar g(any_object);
    ASSERT_TRUE((*ref)->AddSequence(99).ok());
    std::vector<int32_t> feed = Prompt(p);
    while (want.size() < kMax) {
      StepOutput out = (*ref)->Step({{99, feed, true}}).value();
      const float* row = out.chunks[0].logits.data() + (out.chunks[0].rows - 1) * V;
      int32_t best = -1;
      for (int32_t id = 0; id < V; ++id) {
        bool ok = false;
        if (g.Complete()) {
          ok = id == 2;
        } else if (!texts[static_cast<size_t>(id)].empty()) {
          JsonGrammar probe = g;
          ok = probe.Feed(texts[static_cast<size_t>(id)]);
        }
        if (ok && (best < 0 || row[id] > row[best])) best = id;
      }
      ASSERT_GE(best, 0);
      want.push_back(best);
      if (best == 2) break;
      ASSERT_TRUE(g.Feed(texts[static_cast<size_t>(best)]));
      feed = {best};
    }
    (*ref)->FreeSequence(99);
    EXPECT_EQ(seqs[p + 1].tokens, want);
    for (uint64_t id : {p + 1, p + 11}) {
      const RecordingOutbox::Sequence& s = seqs[id];
      ASSERT_TRUE(s.finished.has_value());
      std::string text;
      for (int32_t t : s.tokens) text += texts[static_cast<size_t>(t)];
      if (s.finished->reason() == Finished::REASON_STOP) {
        ++closed;
        EXPECT_EQ(s.tokens.back(), 2);
        EXPECT_TRUE(nlohmann::json::accept(text) && nlohmann::json::parse(text).is_object()) << text;
      } else {
        EXPECT_EQ(s.finished->reason(), Finished::REASON_LENGTH) << s.finished->error();
        EXPECT_EQ(s.tokens.size(), kMax);
      }
    }
  }
  EXPECT_GE(closed, 1) << "no request closed its object: the check of the parsed text never ran";

  LoopHarness no_vocabulary;
  Assign a = Greedy(1, Prompt(0), 8);
  a.set_json_object(true);
  no_vocabulary.Push(a);
  no_vocabulary.RunUntilDone();
  auto got = no_vocabulary.out.BySequence();
  ASSERT_TRUE(got[1].finished.has_value());
  EXPECT_EQ(got[1].finished->reason(), Finished::REASON_ERROR);
  EXPECT_NE(got[1].finished->error().find("json_object"), std::string::npos) << got[1].finished->error();
}

// With ignore_eos (no end id) a closed object may be followed only by whitespace, up to its bound;
// then the grammar allows nothing, and the engine's pick under that empty mask is not sent: the
// request ends with REASON_STOP, its text an object and whitespace.
TEST_F(WorkerLoopTest, JsonObjectWithoutEndIdsStopsWhenItsTrailingWhitespaceIsSpent) {
  const std::vector<std::string> texts = TinyJsonVocabulary();
  ServingLoopOptions lo;
  lo.vocabulary = std::make_shared<const TokenTextTrie>(texts);
  LoopHarness h({}, lo);
  const uint32_t kMax = 120;
  for (uint64_t p = 0; p < 4; ++p) {
    Assign a = Greedy(p + 1, Prompt(p), kMax);
    a.set_json_object(true);
    a.set_ignore_eos(true);
    h.Push(a);
  }
  h.RunUntilDone();
  int stopped = 0;
  for (const auto& [id, s] : h.out.BySequence()) {
    ASSERT_TRUE(s.finished.has_value()) << "sequence " << id;
    if (s.finished->reason() != Finished::REASON_STOP) {
      EXPECT_EQ(s.finished->reason(), Finished::REASON_LENGTH) << s.finished->error();
      continue;
    }
    ++stopped;
    std::string text;
    for (int32_t t : s.tokens) text += texts[static_cast<size_t>(t)];
    const size_t end = text.find_last_not_of(" \n");
    ASSERT_NE(end, std::string::npos);
    EXPECT_LT(end + 1, text.size()) << "no whitespace after the object: " << text;
    EXPECT_TRUE(nlohmann::json::accept(text.substr(0, end + 1)) && nlohmann::json::parse(text.substr(0, end + 1)).is_object())
        << text;
    EXPECT_LT(s.tokens.size(), kMax);
  }
  EXPECT_GE(stopped, 1) << "no request closed its object within " << kMax << " tokens";
}

// A long prompt fed in 16-token chunks (over 9 steps) gives the same tokens; so does a mix of
// chunked prefills and decodes sharing the budget.
TEST_F(WorkerLoopTest, MaxBatchTokensChunkingGivesTheSameTokens) {
  ServingLoopOptions lo;
  lo.max_batch_tokens = 16;
  LoopHarness h({}, lo);
  h.Push(Greedy(1, Prompt(4), 24));  // 130 prompt tokens
  h.Run(2);
  h.Push(Greedy(2, Prompt(3), 24));  // 64
  h.Push(Greedy(3, Prompt(0), 24));
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  EXPECT_EQ(seqs[1].tokens, Greedy24(4));
  EXPECT_EQ(seqs[2].tokens, Greedy24(3));
  EXPECT_EQ(seqs[3].tokens, Greedy24(0));
  // 130 tokens at most 16 a step: the first token cannot come before the 9th step.
  EXPECT_GE(h.loop->steps(), 9u + 23u);
}

// A sequence whose prompt + max_tokens does not fit the KV cache now waits in the local FIFO and
// runs once others have finished; one that could never fit ends with an error at once.
TEST_F(WorkerLoopTest, SequenceWaitsForKvRoomThenRuns) {
  EngineOptions eo;
  eo.kv_block_size = 16;
  eo.kv_tokens = 128;  // 8 blocks
  LoopHarness h(eo, {.kv_admission = KvAdmission::kReserve});
  h.Push(Greedy(1, Prompt(3), 24));  // 64 + 24 -> 6 blocks
  h.Push(Greedy(2, Prompt(1), 24));  // 5 + 24 -> 2 blocks
  Assign waits = Greedy(3, Prompt(2), 24);  // 17 + 24 -> 3 blocks: waits
  waits.set_queued_seconds(0.5f);  // what the coordinator held it
  h.Push(waits);
  h.Push(Greedy(4, Prompt(4), 24));  // 130 + 24 -> 10 blocks: never fits
  h.RunUntilDone();
  // Its first token reports the coordinator's wait plus the rank's (while 1 ran); others none.
  std::map<uint64_t, std::vector<float>> queued;
  for (const auto& m : h.out.messages()) {
    if (m.has_tokens()) queued[m.tokens().seq_id()].push_back(m.tokens().queued_seconds());
  }
  ASSERT_EQ(queued[3].size(), 24u);
  EXPECT_GT(queued[3][0], 0.5f);
  EXPECT_LT(queued[3][0], 60.0f);
  EXPECT_LT(queued[1][0], queued[3][0] - 0.5f) << "1 ran at once";
  for (size_t i = 1; i < queued[3].size(); ++i) EXPECT_EQ(queued[3][i], 0.0f) << "the first token's alone";

  auto seqs = h.out.BySequence();
  EXPECT_EQ(seqs[1].tokens, Greedy24(3));
  EXPECT_EQ(seqs[2].tokens, Greedy24(1));
  EXPECT_EQ(seqs[3].tokens, Greedy24(2));
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_LENGTH) << id;
  EXPECT_GT(seqs[3].first_token_index, seqs[1].finished_index) << "3 ran only after 1 freed its blocks";
  ASSERT_TRUE(seqs[4].finished.has_value());
  EXPECT_EQ(seqs[4].finished->reason(), Finished::REASON_ERROR);
  EXPECT_NE(seqs[4].finished->error().find("KV blocks"), std::string::npos) << seqs[4].finished->error();
  EXPECT_TRUE(seqs[4].tokens.empty());
  for (const auto& m : h.out.messages()) {
    if (m.has_heartbeat()) {
      EXPECT_LE(m.heartbeat().stats().kv_blocks_used(), 8);
    }
  }
}

// On demand (the default), a cache far smaller than the sequences' worst cases runs them together:
// each is admitted at its prompt and, as they grow, the newest are preempted and later compute
// prompt + tokens again. Every greedy token is still the golden one with the model's logprob,
// sampled tokens still GenerateAll's (same seed, same step numbers), and a score still ScoreAll's
// (a preempted score starts again). With prefix caching a readmitted sequence attaches the blocks
// it had filled instead of computing them again. Reserving worst cases instead runs one at a time,
// never preempting, with the same outputs.
TEST_F(WorkerLoopTest, PreemptedSequencesGiveTheSameOutputs) {
  auto ref = LoadLocalEngine(kGoldenDir);
  GenerateRequest req;
  req.prompt = Prompt(1);
  req.max_tokens = 20;
  req.sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 99};
  const std::vector<int32_t> want_sampled = GenerateAll(**ref, {req}).value()[0].tokens;
  const std::vector<int32_t> scored = Prompt(2);  // 17 tokens: 5 blocks
  const std::vector<float> want_score = ScoreAll(**ref, {scored}).value()[0].logprobs;  // [0] is NaN

  for (const auto& [mode, cache] : {std::pair{KvAdmission::kOnDemand, false}, std::pair{KvAdmission::kOnDemand, true},
                                    std::pair{KvAdmission::kReserve, false}}) {
    SCOPED_TRACE(std::string(mode == KvAdmission::kOnDemand ? "on demand" : "reserve") + (cache ? ", prefix cache" : ""));
    EngineOptions eo;
    eo.kv_block_size = 4;
    eo.kv_tokens = 48;  // 12 blocks; prompt 1 (5 tokens) + 24 needs 8 at worst, prompt 0 (1) + 24 needs 7
    LoopHarness h(eo, {.kv_admission = mode});
    if (cache) (*h.engine)->EnablePrefixCache();
    for (uint64_t id = 1; id <= 4; ++id) h.Push(Greedy(id, Prompt(id % 2), 24));
    Assign sampled = Greedy(5, Prompt(1), 20);
    sampled.set_temperature(0.9f);
    sampled.set_top_k(50);
    sampled.set_top_p(0.95f);
    sampled.set_seed(99);
    h.Push(sampled);
    h.Push(Score(6, scored));
    int64_t most_running = 0;
    for (int i = 0; i < kMaxIterations && (h.loop->num_sequences() > 0 || i == 0); ++i) {
      ASSERT_TRUE(h.loop->RunOnce());
      most_running = std::max(most_running, h.loop->num_running());
    }
    ASSERT_EQ(h.loop->num_sequences(), 0);

    auto seqs = h.out.BySequence();
    for (uint64_t id = 1; id <= 4; ++id) {
      EXPECT_EQ(seqs[id].tokens, Greedy24(id % 2)) << id;
      EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_LENGTH) << id;
      std::vector<int32_t> full = Prompt(id % 2);
      full.insert(full.end(), seqs[id].tokens.begin(), seqs[id].tokens.end());
      const std::vector<float> want = ScoreAll(**ref, {full}).value()[0].logprobs;
      ASSERT_EQ(seqs[id].logprobs.size(), seqs[id].tokens.size());
      for (size_t t = 0; t < seqs[id].logprobs.size(); ++t) {
        EXPECT_NEAR(seqs[id].logprobs[t], want[Prompt(id % 2).size() + t], 1e-4) << id << " token " << t;
      }
    }
    EXPECT_EQ(seqs[5].tokens, want_sampled);
    ASSERT_TRUE(seqs[6].scored.has_value());
    ASSERT_EQ(seqs[6].scored->logprobs_size(), static_cast<int>(scored.size()) - 1);
    for (int k = 0; k < seqs[6].scored->logprobs_size(); ++k) {
      EXPECT_NEAR(seqs[6].scored->logprobs(k), want_score[static_cast<size_t>(k) + 1], 1e-4) << "score token " << k;
    }
    EXPECT_EQ((*h.engine)->kv_cache().used_blocks(), 0);
    if (mode == KvAdmission::kOnDemand) {
      EXPECT_GT(h.loop->preemptions(), 0u);
      EXPECT_GE(most_running, 4);
      EXPECT_EQ(h.out.LastStats()->preemptions(), h.loop->preemptions());
      // Readmitted, preempted generations attach the blocks they had filled.
      if (cache) {
        EXPECT_GE(h.out.LastStats()->prefix_cache_hit_tokens(), 4 * static_cast<int64_t>(h.loop->preemptions()));
      }
    } else {
      EXPECT_EQ(h.loop->preemptions(), 0u);
      EXPECT_EQ(most_running, 1);
    }
  }
}

// Assign.prompt_logprobs (vLLM's): before its first token a generation sends, for every prompt
// token after the first, its log-probability, its rank and the top alternatives: transformers'
// (the golden prompt logits, log-softmax in double) within 1e-4; ranks exact wherever no other id's
// logit is within 1e-4 of the token's (the engines differ by ~1e-6); every alternative one of the reference's top n (within
// 1e-3) with its reference log-probability. Its tokens stay the golden ones. The same with the
// prompt in chunks of 4 and with the prompt's blocks cached by an earlier request (computed whole
// all the same); a completion without prompt_logprobs sends none, and a prompt of one token none.
TEST_F(WorkerLoopTest, PromptLogprobsAreTransformersAndComeBeforeTheFirstToken) {
  const int64_t V = 1024;
  constexpr uint32_t kTop = 3;
  int exact_ranks = 0, positions = 0;
  for (const bool chunked_and_cached : {false, true}) {
    SCOPED_TRACE(chunked_and_cached ? "chunks of 4, prompts cached" : "whole prompts");
    EngineOptions eo;
    eo.kv_block_size = 4;
    LoopHarness h(eo, {.max_batch_tokens = chunked_and_cached ? 4 : 4096});
    if (chunked_and_cached) {
      (*h.engine)->EnablePrefixCache();
      for (uint64_t p = 0; p < golden_->num_prompts(); ++p) h.Push(Greedy(50 + p, Prompt(p), 1));
      h.RunUntilDone();
    }
    for (uint64_t p = 0; p < golden_->num_prompts(); ++p) {
      Assign a = Greedy(1 + p, Prompt(p), 24);
      a.set_prompt_logprobs(p % 2 == 0 ? kTop : 0);
      h.Push(a);
    }
    h.Push(Greedy(99, Prompt(2), 4));  // no prompt_logprobs
    h.RunUntilDone();
    auto seqs = h.out.BySequence();
    EXPECT_FALSE(seqs[99].prompt_logprobs.has_value());
    for (uint64_t p = 0; p < golden_->num_prompts(); ++p) {
      SCOPED_TRACE("prompt " + std::to_string(p));
      const RecordingOutbox::Sequence& s = seqs[1 + p];
      EXPECT_EQ(s.tokens, Greedy24(p));
      const std::vector<int32_t> prompt = Prompt(p);
      if (prompt.size() == 1) {
        EXPECT_FALSE(s.prompt_logprobs.has_value());
        continue;
      }
      ASSERT_TRUE(s.prompt_logprobs.has_value());
      EXPECT_LT(s.prompt_logprobs_index, s.first_token_index);
      const moe::v1::PromptLogprobs& got = *s.prompt_logprobs;
      const size_t n = prompt.size() - 1;
      ASSERT_EQ(got.logprobs_size(), static_cast<int>(n));
      ASSERT_EQ(got.ranks_size(), static_cast<int>(n));
      ASSERT_EQ(got.top_size(), p % 2 == 0 ? static_cast<int>(n) : 0);
      const std::vector<float> logits = golden_->F32("logits." + std::to_string(p));
      ASSERT_EQ(logits.size(), prompt.size() * static_cast<size_t>(V));
      positions += static_cast<int>(n);
      for (size_t r = 0; r < n; ++r) {
        const float* row = logits.data() + r * V;
        double mx = row[0], sum = 0;
        for (int64_t j = 0; j < V; ++j) mx = std::max(mx, static_cast<double>(row[j]));
        for (int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<double>(row[j]) - mx);
        auto ref_logprob = [&](int32_t id) { return static_cast<double>(row[id]) - mx - std::log(sum); };
        const int32_t next = prompt[r + 1];
        EXPECT_NEAR(got.logprobs(static_cast<int>(r)), ref_logprob(next), 1e-4) << "position " << r;
        uint32_t rank = 0;
        bool near_tie = false;
        for (int64_t j = 0; j < V; ++j) {
          rank += row[j] >= row[next];
          near_tie = near_tie || (j != next && std::abs(row[j] - row[next]) < 1e-4);
        }
        if (!near_tie) {
          EXPECT_EQ(got.ranks(static_cast<int>(r)), rank) << "position " << r;
          ++exact_ranks;
        }
        if (got.top_size() == 0) continue;
        std::vector<float> sorted(row, row + V);
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        const moe::v1::TopAlternatives& alts = got.top(static_cast<int>(r));
        ASSERT_EQ(alts.alternatives_size(), static_cast<int>(kTop));
        for (const moe::v1::WorkerTopLogprob& alt : alts.alternatives()) {
          EXPECT_GE(row[alt.token_id()], sorted[kTop - 1] - 1e-3) << "position " << r << ": " << alt.token_id();
          EXPECT_NEAR(alt.logprob(), ref_logprob(alt.token_id()), 1e-4) << "position " << r;
        }
      }
    }
  }
  EXPECT_GT(exact_ranks, positions * 3 / 4);
}

// A generation resumed with the tokens it had produced on a lost worker job (Assign.resume_tokens)
// sends only the tokens after them, and they are what it would have sent uninterrupted: the golden
// greedy tokens, the same seeded draws (its step numbers go on), logprobs within the last bits. One
// that had already ended (only its Finished was lost) ends at once with the same reason.
TEST_F(WorkerLoopTest, ResumedGenerationsGoOnAsIfNeverInterrupted) {
  auto ref = LoadLocalEngine(kGoldenDir);
  GenerateRequest req;
  req.prompt = Prompt(1);
  req.max_tokens = 20;
  req.sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 77};
  const GenerateResult want_sampled = GenerateAll(**ref, {req}).value()[0];
  const std::vector<int32_t> g0 = Greedy24(0), g1 = Greedy24(1);

  LoopHarness h;
  Assign plain = Greedy(1, Prompt(1), 24);
  h.Push(plain);  // uninterrupted, for the logprobs
  auto resumed = [](Assign a, uint64_t id, const std::vector<int32_t>& tokens, size_t k) {
    a.set_seq_id(id);
    a.mutable_resume_tokens()->Add(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(k));
    return a;
  };
  h.Push(resumed(plain, 2, g1, 7));
  h.Push(resumed(Greedy(3, Prompt(0), 24), 3, g0, 1));
  h.Push(resumed(plain, 4, g1, 23));
  Assign sampled = Greedy(5, Prompt(1), 20);
  sampled.set_temperature(0.9f);
  sampled.set_top_k(50);
  sampled.set_top_p(0.95f);
  sampled.set_seed(77);
  h.Push(resumed(sampled, 5, want_sampled.tokens, 9));
  h.Push(resumed(plain, 6, g1, 24));  // every token: it had ended at max_tokens
  Assign stop = Greedy(7, Prompt(1), 24);
  stop.add_stop_token_ids(g1[5]);
  const size_t first_stop = static_cast<size_t>(std::find(g1.begin(), g1.end(), g1[5]) - g1.begin());
  h.Push(resumed(stop, 7, g1, first_stop + 1));  // it had ended on its stop token
  Assign bad = resumed(plain, 8, g1, 3);
  bad.set_resume_tokens(1, (*h.engine)->config().vocab_size);
  h.Push(bad);
  h.Push(resumed(Score(10, Prompt(1)), 10, g1, 2));
  Assign too_many = resumed(Greedy(11, Prompt(1), 4), 11, g1, 5);
  h.Push(too_many);
  h.RunUntilDone();

  auto seqs = h.out.BySequence();
  ASSERT_EQ(seqs[1].tokens, g1);
  auto tail = [](const std::vector<int32_t>& v, size_t k) { return std::vector<int32_t>(v.begin() + k, v.end()); };
  EXPECT_EQ(seqs[2].tokens, tail(g1, 7));
  EXPECT_EQ(seqs[3].tokens, tail(g0, 1));
  EXPECT_EQ(seqs[4].tokens, tail(g1, 23));
  for (uint64_t id : {2, 3, 4}) EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_LENGTH) << id;
  ExpectLogprobsNear(seqs[2].logprobs, std::vector<float>(seqs[1].logprobs.begin() + 7, seqs[1].logprobs.end()));
  EXPECT_EQ(seqs[5].tokens, tail(want_sampled.tokens, 9));
  EXPECT_TRUE(seqs[6].tokens.empty());
  EXPECT_EQ(seqs[6].finished->reason(), Finished::REASON_LENGTH);
  EXPECT_TRUE(seqs[7].tokens.empty());
  EXPECT_EQ(seqs[7].finished->reason(), Finished::REASON_STOP);
  for (uint64_t id : {8, 10, 11}) {
    ASSERT_TRUE(seqs[id].finished.has_value()) << id;
    EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_ERROR) << id;
    EXPECT_NE(seqs[id].finished->error().find("resume_tokens"), std::string::npos) << seqs[id].finished->error();
    EXPECT_TRUE(seqs[id].tokens.empty()) << id;
  }
  EXPECT_EQ((*h.engine)->kv_cache().used_blocks(), 0);
}

// allowed_token_ids (vLLM's): every greedy token is the argmax over the allowed ids of the float64
// reference's logits, its logprob still the model's over the whole vocabulary; the unconstrained
// greedy continuation is not what comes out.
TEST_F(WorkerLoopTest, AllowedTokenIdsGreedyIsTheArgmaxAmongThem) {
  const std::vector<int32_t> prompt = Prompt(2);
  const std::vector<int32_t> allowed = {3, 17, 100, 511, 700, 1000};
  Assign a = Greedy(1, prompt, 12);
  a.mutable_allowed_token_ids()->Add(allowed.begin(), allowed.end());
  LoopHarness h;
  h.Push(a);
  h.RunUntilDone();
  const RecordingOutbox::Sequence s = h.out.BySequence()[1];
  ASSERT_EQ(s.tokens.size(), 12u);
  const std::vector<int32_t> free_greedy = Greedy24(2);
  EXPECT_NE(s.tokens, std::vector<int32_t>(free_greedy.begin(), free_greedy.begin() + 12));

  std::vector<int32_t> full = prompt;
  full.insert(full.end(), s.tokens.begin(), s.tokens.end());
  auto ckpt = Checkpoint::Open(kGoldenDir).value();
  const ReferenceOutput ref = ReferenceForward((*h.engine)->config(), *ckpt, full).value();
  int checked = 0;
  for (size_t t = 0; t < s.tokens.size(); ++t) {
    const int64_t row = static_cast<int64_t>(prompt.size() + t) - 1;
    EXPECT_TRUE(std::binary_search(allowed.begin(), allowed.end(), s.tokens[t])) << "token " << t;
    std::vector<std::pair<double, int32_t>> ranked;
    for (int32_t id : allowed) ranked.emplace_back(ref.logit(row, id), id);
    std::sort(ranked.rbegin(), ranked.rend());
    if (ranked[0].first - ranked[1].first < 1e-3) continue;  // too close to call in float32
    EXPECT_EQ(s.tokens[t], ranked[0].second) << "token " << t;
    double sum = 0;  // the logprob over the whole vocabulary
    for (int64_t v = 0; v < ref.vocab; ++v) sum += std::exp(ref.logit(row, v) - ranked[0].first);
    EXPECT_NEAR(s.logprobs[t], -std::log(sum), 1e-3) << "token " << t;
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

// Priorities on one rank: a request of a lower priority value that arrives with others is admitted
// first and, when the cache runs short, others are preempted instead; it finishes first, and every
// sequence still gives the golden tokens.
TEST_F(WorkerLoopTest, ALowerPriorityValueRunsFirstAndIsNotPreempted) {
  EngineOptions eo;
  eo.kv_block_size = 4;
  eo.kv_tokens = 48;  // 12 blocks; prompt 1 (5 tokens) + 24 needs 8
  LoopHarness h(eo);
  for (uint64_t id = 1; id <= 4; ++id) {
    Assign a = Greedy(id, Prompt(1), 24);
    a.set_priority(id == 3 ? -1 : 0);
    h.Push(a);
  }
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  for (uint64_t id = 1; id <= 4; ++id) EXPECT_EQ(seqs[id].tokens, Greedy24(1)) << id;
  for (uint64_t id : {1, 2, 4}) EXPECT_LT(seqs[3].finished_index, seqs[id].finished_index) << id;
  EXPECT_GT(h.loop->preemptions(), 0u);
}

// A request of a lower priority value that arrives while the cache is full of others takes their
// blocks at once: they are preempted, it runs, and everything still gives the golden tokens.
TEST_F(WorkerLoopTest, ALowerPriorityValuePreemptsRunningOnesToGetIn) {
  EngineOptions eo;
  eo.kv_block_size = 4;
  eo.kv_tokens = 48;  // 12 blocks
  LoopHarness h(eo);
  for (uint64_t id : {1, 2}) h.Push(Greedy(id, Prompt(2), 24));  // 17 + 24 = 41 positions: 11 blocks at worst
  h.Run(6);  // both admitted and decoding: 22 positions, 6 blocks each, the cache full
  ASSERT_EQ(h.loop->num_running(), 2);
  ASSERT_EQ(h.loop->preemptions(), 0u);
  Assign urgent = Greedy(3, Prompt(1), 8);
  urgent.set_priority(-1);
  h.Push(urgent);
  h.Run(1);
  EXPECT_GT(h.loop->preemptions(), 0u) << "the cache could not take it beside both";
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  for (uint64_t id : {1, 2}) EXPECT_EQ(seqs[id].tokens, Greedy24(2)) << id;
  const std::vector<int32_t> g = Greedy24(1);
  EXPECT_EQ(seqs[3].tokens, std::vector<int32_t>(g.begin(), g.begin() + 8));
  EXPECT_LT(seqs[3].finished_index, seqs[1].finished_index);
  EXPECT_LT(seqs[3].finished_index, seqs[2].finished_index);
}

TEST_F(WorkerLoopTest, CancelFreesKvBlocksAndFinishesCancelled) {
  LoopHarness h;
  h.Push(Greedy(1, Prompt(4), 500));
  h.Push(Greedy(2, Prompt(0), 24));
  h.Run(5);
  EXPECT_GT(h.loop->Stats().kv_blocks_used(), 0);
  h.Cancel(1);
  h.Cancel(2);
  h.Cancel(12345);  // unknown: ignored
  h.Run(1);
  auto seqs = h.out.BySequence();
  ASSERT_TRUE(seqs[1].finished.has_value());
  EXPECT_EQ(seqs[1].finished->reason(), Finished::REASON_CANCELLED);
  EXPECT_EQ(seqs[2].finished->reason(), Finished::REASON_CANCELLED);
  const std::vector<int32_t> g = Greedy24(4);
  EXPECT_EQ(seqs[1].tokens, std::vector<int32_t>(g.begin(), g.begin() + 5))
      << "one token per step, the first with the prefill";
  EXPECT_EQ(seqs.count(12345), 0u);
  std::optional<moe::v1::WorkerStats> st = h.out.LastStats();
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->kv_blocks_used(), 0);
  EXPECT_EQ(st->running_sequences(), 0);
  EXPECT_EQ(st->kv_blocks_total(), (*h.engine)->kv_cache().total_blocks());
  EXPECT_FALSE(st->load_stats_json().empty());

  // A cancel after the end, and a cancel of a sequence still waiting for KV room.
  const size_t before = h.out.messages().size();
  h.Cancel(2);
  h.Run(1);
  EXPECT_EQ(h.out.messages().size(), before) << "a finished sequence's Cancel is ignored";
}

TEST_F(WorkerLoopTest, CancelOfAWaitingSequence) {
  EngineOptions eo;
  eo.kv_tokens = 128;
  LoopHarness h(eo, {.kv_admission = KvAdmission::kReserve});
  h.Push(Greedy(1, Prompt(3), 24));  // 6 of 8 blocks
  h.Push(Greedy(2, Prompt(2), 24));  // 3 blocks: waits
  h.Run(2);
  h.Cancel(2);
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  EXPECT_EQ(seqs[1].tokens, Greedy24(3));
  EXPECT_EQ(seqs[2].finished->reason(), Finished::REASON_CANCELLED);
  EXPECT_TRUE(seqs[2].tokens.empty());
}

TEST_F(WorkerLoopTest, InvalidAssignsEndWithAnErrorAndOthersRun) {
  LoopHarness h;
  Assign bad_token = Greedy(1, {5, 1024, 7}, 4);
  Assign bad_top_p = Greedy(2, Prompt(1), 4);
  bad_top_p.set_top_p(0.0f);
  bad_top_p.set_temperature(1.0f);
  Assign empty = Greedy(3, {}, 4);
  h.Push(bad_token);
  h.Push(bad_top_p);
  h.Push(empty);
  h.Push(Greedy(4, Prompt(1), 24));
  h.Push(Greedy(5, Prompt(1), 0));  // nothing to generate
  Assign many_alternatives = Greedy(6, Prompt(1), 4);
  many_alternatives.set_prompt_logprobs(kMaxTopLogprobs + 1);  // (the coordinator caps it; a rank checks too)
  h.Push(many_alternatives);
  h.RunUntilDone();
  auto seqs = h.out.BySequence();
  for (uint64_t id : {1, 2, 3, 6}) {
    ASSERT_TRUE(seqs[id].finished.has_value()) << id;
    EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_ERROR) << id;
  }
  EXPECT_NE(seqs[1].finished->error().find("vocabulary"), std::string::npos) << seqs[1].finished->error();
  EXPECT_NE(seqs[2].finished->error().find("top_p"), std::string::npos) << seqs[2].finished->error();
  EXPECT_NE(seqs[3].finished->error().find("prompt"), std::string::npos) << seqs[3].finished->error();
  EXPECT_NE(seqs[6].finished->error().find("prompt_logprobs: 21 above 20"), std::string::npos) << seqs[6].finished->error();
  EXPECT_EQ(seqs[4].tokens, Greedy24(1));
  EXPECT_EQ(seqs[5].finished->reason(), Finished::REASON_LENGTH);
  EXPECT_TRUE(seqs[5].tokens.empty());
}

// ----------------------------------------------------------------------------------------------
// Scoring.

// Per token: ScoreAll's logprob, is_argmax exactly where the token is the greedy choice, and the
// argmax with its log-softmax value computed here in double from the reference's logits. The
// golden prompt + its greedy continuation is greedy at every continuation position.
void CheckScores(const std::vector<std::vector<int32_t>>& seqs, const std::map<uint64_t, RecordingOutbox::Sequence>& got,
                 double tol) {
  auto ref = LoadLocalEngine(kGoldenDir);
  auto want = ScoreAll(**ref, seqs).value();
  const int64_t V = (*ref)->config().vocab_size;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const RecordingOutbox::Sequence& s = got.at(i + 1);
    ASSERT_TRUE(s.scored.has_value()) << "sequence " << i;
    ASSERT_TRUE(s.finished.has_value());
    EXPECT_EQ(s.finished->reason(), Finished::REASON_LENGTH);
    EXPECT_GT(s.finished_index, 0);
    const size_t n = seqs[i].size();
    ASSERT_EQ(static_cast<size_t>(s.scored->logprobs_size()), n - 1);
    ASSERT_EQ(static_cast<size_t>(s.scored->is_argmax_size()), n - 1);
    ASSERT_EQ(static_cast<size_t>(s.scored->argmax_ids_size()), n - 1);
    ASSERT_EQ(static_cast<size_t>(s.scored->argmax_logprobs_size()), n - 1);
    // The reference argmax, from the reference engine's logits.
    ASSERT_TRUE((*ref)->AddSequence(99).ok());
    StepOutput out = (*ref)->Step({{99, seqs[i], true}}).value();
    (*ref)->FreeSequence(99);
    for (size_t t = 1; t < n; ++t) {
      EXPECT_NEAR(s.scored->logprobs(static_cast<int>(t - 1)), want[i].logprobs[t], tol) << "sequence " << i << " token " << t;
      const float* row = out.chunks[0].logits.data() + (t - 1) * V;
      const int32_t argmax = static_cast<int32_t>(std::max_element(row, row + V) - row);
      EXPECT_EQ(s.scored->is_argmax(static_cast<int>(t - 1)), argmax == seqs[i][t]) << "sequence " << i << " token " << t;
      EXPECT_EQ(s.scored->argmax_ids(static_cast<int>(t - 1)), argmax) << "sequence " << i << " token " << t;
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - row[argmax]);
      // Within float32 rounding of logits from a step of another shape (one chunk here).
      EXPECT_NEAR(s.scored->argmax_logprobs(static_cast<int>(t - 1)), -std::log(sum), std::max(tol, 1e-5))
          << "sequence " << i << " token " << t;
    }
  }
}

std::vector<std::vector<int32_t>> ScoredInputs(const Golden& g) {
  std::vector<std::vector<int32_t>> seqs;
  for (size_t p = 0; p < g.num_prompts(); ++p) {
    std::vector<int32_t> s = g.prompt(p);
    const std::vector<int32_t> c = g.greedy(p);
    s.insert(s.end(), c.begin(), c.end());
    seqs.push_back(s);
  }
  return seqs;
}

TEST_F(WorkerLoopTest, ScoreMatchesScoreAll) {
  LoopHarness h;
  const auto seqs = ScoredInputs(*golden_);
  for (size_t i = 0; i < seqs.size(); ++i) h.Push(Score(i + 1, seqs[i]));
  h.RunUntilDone();
  auto got = h.out.BySequence();
  CheckScores(seqs, got, 1e-6);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const size_t n = golden_->prompt(i).size();
    for (size_t t = n; t < seqs[i].size(); ++t) {
      EXPECT_TRUE(got[i + 1].scored->is_argmax(static_cast<int>(t - 1))) << "golden greedy token " << t - n;
    }
  }
}

TEST_F(WorkerLoopTest, ChunkedScoreMatchesScoreAll) {
  ServingLoopOptions lo;
  lo.max_batch_tokens = 16;
  LoopHarness h({}, lo);
  const auto seqs = ScoredInputs(*golden_);
  h.Push(Greedy(100, Prompt(2), 24));  // a generation sharing the steps
  for (size_t i = 0; i < seqs.size(); ++i) h.Push(Score(i + 1, seqs[i]));
  h.RunUntilDone();
  auto got = h.out.BySequence();
  CheckScores(seqs, got, 1e-5);
  EXPECT_EQ(got[100].tokens, Greedy24(2));
}

// ----------------------------------------------------------------------------------------------
// Prefix caching.

// A generation whose prompt starts with a finished one's whole KV blocks attaches them and computes
// only the rest: the same tokens as without caching, logprobs within the engine's chunking error of
// ScoreAll's, and the statistics count the prompt tokens found. Scoring computes every position.
TEST_F(WorkerLoopTest, PrefixCachingReusesAFinishedPromptsBlocksWithTheSameTokens) {
  EngineOptions eo;
  eo.kv_block_size = 8;
  std::vector<int32_t> shared = Prompt(0);  // the golden prompt and its greedy continuation
  for (int32_t t : Greedy24(0)) shared.push_back(t);
  std::vector<int32_t> longer = shared, branch(shared.begin(), shared.begin() + 20);
  for (int32_t t : Prompt(1)) longer.push_back(t);
  for (int32_t t : Prompt(2)) branch.push_back(t);
  const std::vector<std::vector<int32_t>> prompts = {shared, longer, branch};

  std::map<uint64_t, RecordingOutbox::Sequence> with, without;
  for (bool cache : {true, false}) {
    LoopHarness h(eo);
    if (cache) (*h.engine)->EnablePrefixCache();
    h.Push(Greedy(1, shared, 8));
    h.RunUntilDone();
    h.Push(Greedy(2, longer, 8));
    h.Push(Greedy(3, branch, 8));
    h.Push(Score(4, shared));
    h.RunUntilDone();
    (cache ? with : without) = h.out.BySequence();
    const std::optional<moe::v1::WorkerStats> st = h.out.LastStats();
    ASSERT_TRUE(st.has_value());
    if (!cache) {
      EXPECT_EQ(st->prefix_cache_hit_tokens(), 0);
      continue;
    }
    // Sequence 1 cached its whole blocks (prompt and generated tokens); 2 finds all of the shared
    // prompt's whole blocks, 3 the two whole blocks of its first 20 tokens; scoring looks up nothing.
    const int64_t whole = static_cast<int64_t>(shared.size()) / 8 * 8;
    EXPECT_EQ(st->prefix_cache_queried_tokens(), static_cast<int64_t>(shared.size() + longer.size() + branch.size()));
    EXPECT_EQ(st->prefix_cache_hit_tokens(), whole + 16);
    EXPECT_GT(st->kv_blocks_cached(), 0);
    EXPECT_EQ(st->kv_blocks_used(), 0);
  }
  auto ref = LoadLocalEngine(kGoldenDir);
  for (uint64_t id : {1, 2, 3}) {
    const std::vector<int32_t>& prompt = prompts[id - 1];
    EXPECT_EQ(with[id].tokens, without[id].tokens) << "sequence " << id;
    ASSERT_EQ(with[id].logprobs.size(), 8u);
    std::vector<int32_t> full = prompt;
    full.insert(full.end(), with[id].tokens.begin(), with[id].tokens.end());
    const auto want = ScoreAll(**ref, {full}).value();
    for (size_t t = 0; t < 8; ++t) {
      EXPECT_NEAR(with[id].logprobs[t], want[0].logprobs[prompt.size() + t], 1e-4) << "sequence " << id << " token " << t;
    }
  }
  ASSERT_TRUE(with[4].scored.has_value());
  ASSERT_TRUE(without[4].scored.has_value());
  ASSERT_EQ(with[4].scored->logprobs_size(), without[4].scored->logprobs_size());
  for (int i = 0; i < with[4].scored->logprobs_size(); ++i) {
    EXPECT_NEAR(with[4].scored->logprobs(i), without[4].scored->logprobs(i), 1e-5) << "scored token " << i;
  }
}

// Sequences whose prompts start with the same cached blocks share them, so they run at once where
// a KV cache holding two separate copies would make them take turns; and they carry the tokens of
// the run without caching.
TEST_F(WorkerLoopTest, PrefixCachingRunsMoreSequencesAtOnceThatShareTheirPromptsStart) {
  EngineOptions eo;
  eo.kv_block_size = 8;
  eo.kv_tokens = 40 * 8;
  const std::vector<int32_t> shared = Prompt(4);  // 130 tokens: 16 whole blocks to share
  const std::vector<std::vector<int32_t>> prompts = SharedStartPrompts(4, {0, 1, 2, 3}, 12);
  // Worst cases 18, 18, 20 and 20 blocks: two fit 40 blocks. Shared, the first takes 18 (it attaches
  // the cached blocks) and the others 2, 4 and 4.
  std::map<uint64_t, RecordingOutbox::Sequence> with, without;
  for (bool cache : {true, false}) {
    LoopHarness h(eo);
    if (cache) (*h.engine)->EnablePrefixCache();
    h.Push(Greedy(1, shared, 8));
    h.RunUntilDone();
    for (size_t i = 0; i < prompts.size(); ++i) h.Push(Greedy(2 + i, prompts[i], 8));
    int64_t most_running = 0;
    for (int i = 0; i < kMaxIterations && (i == 0 || h.loop->num_sequences() > 0); ++i) {
      ASSERT_TRUE(h.loop->RunOnce());
      most_running = std::max(most_running, h.loop->num_running());
    }
    ASSERT_EQ(h.loop->num_sequences(), 0);
    EXPECT_EQ(most_running, cache ? 4 : 2) << (cache ? "with" : "without") << " prefix caching";
    (cache ? with : without) = h.out.BySequence();
    EXPECT_EQ(h.out.LastStats()->kv_blocks_used(), 0);
  }
  for (uint64_t id = 1; id <= 5; ++id) {
    EXPECT_EQ(with[id].tokens.size(), 8u) << "sequence " << id;
    EXPECT_EQ(with[id].tokens, without[id].tokens) << "sequence " << id;
  }
}

// Sequences that arrive together with the same long prompt start (n completions, a burst with one
// system prompt): the first computes the shared blocks, the others wait for them and attach them
// instead of computing them too. The tokens are the uncached run's.
TEST_F(WorkerLoopTest, PrefixCachingComputesAPromptStartSharedByConcurrentArrivalsOnce) {
  EngineOptions eo;
  eo.kv_block_size = 8;
  const std::vector<int32_t> shared = Prompt(4);  // 130 tokens: 16 whole blocks
  std::vector<std::vector<int32_t>> prompts = SharedStartPrompts(4, {0, 1, 2}, 5);
  prompts.push_back(shared);  // the same prompt again, as n completions of it
  std::map<uint64_t, RecordingOutbox::Sequence> with, without;
  for (bool cache : {true, false}) {
    ServingLoopOptions lo;
    lo.max_batch_tokens = 48;  // prefill in several steps, while the others wait
    LoopHarness h(eo, lo);
    if (cache) (*h.engine)->EnablePrefixCache();
    for (size_t i = 0; i < prompts.size(); ++i) h.Push(Greedy(1 + i, prompts[i], 6));
    h.RunUntilDone();
    (cache ? with : without) = h.out.BySequence();
    if (!cache) continue;
    const std::optional<moe::v1::WorkerStats> st = h.out.LastStats();
    ASSERT_TRUE(st.has_value());
    // The first computes all 130; the other three find its 16 whole blocks (128 tokens) each.
    EXPECT_EQ(st->prefix_cache_hit_tokens(), 3 * 128);
  }
  for (uint64_t id = 1; id <= prompts.size(); ++id) {
    EXPECT_EQ(with[id].tokens.size(), 6u) << "sequence " << id;
    EXPECT_EQ(with[id].tokens, without[id].tokens) << "sequence " << id;
  }
}

// ----------------------------------------------------------------------------------------------
// Penalties and min_tokens.

// transformers' greedy continuations under penalties (tests/data/golden/make_penalties_golden.py:
// generate() with repetition_penalty, with min_new_tokens and an extra end id, and with
// sequence_bias as logit_bias; a torch loop for vLLM's frequency and presence rule), all served at once by one loop: each carries the reference
// tokens while the reference's margin stays above float32 noise (all of them, at these margins),
// and a sequence that reached its extra end id after min_tokens ends there with REASON_STOP.
// Asking for top alternatives changes no token, greedy or sampled.
TEST(WorkerLoopPenaltiesTest, GreedyTokensEqualTransformersUnderEachPenalty) {
  std::ifstream f(kGoldenDir + "/penalties.json");
  ASSERT_TRUE(f.good()) << "missing " << kGoldenDir << "/penalties.json";
  const nlohmann::json ref = nlohmann::json::parse(f);
  const Golden golden = Golden::Load();
  const uint32_t max_tokens = ref["max_tokens"];
  LoopHarness h;
  const nlohmann::json& cases = ref["cases"];
  for (size_t i = 0; i < cases.size(); ++i) {
    const nlohmann::json& c = cases[i];
    Assign a = Greedy(100 + i, golden.prompt(c["prompt"]), max_tokens);
    SetPenaltyCaseFields(c, a);
    h.Push(a);
    // Sampled too, and both with top alternatives, which change no token.
    Assign with_top = a;
    with_top.set_seq_id(200 + i);
    with_top.set_top_logprobs(1);
    h.Push(with_top);
    Assign sampled = a;
    sampled.set_seq_id(300 + i);
    sampled.set_temperature(0.9f);
    sampled.set_seed(i);
    h.Push(sampled);
    sampled.set_seq_id(400 + i);
    sampled.set_top_logprobs(1);
    h.Push(sampled);
    // Resumed half way (from a lost worker job): its penalties' counts and min_tokens go on.
    Assign resumed = a;
    resumed.set_seq_id(500 + i);
    const std::vector<int32_t> want = c["tokens"];
    resumed.mutable_resume_tokens()->Add(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(want.size() / 2));
    h.Push(resumed);
  }
  h.RunUntilDone();
  const auto got = h.out.BySequence();
  for (size_t i = 0; i < cases.size(); ++i) {
    for (uint64_t id : {100 + i, 300 + i}) {
      SCOPED_TRACE("sequence " + std::to_string(id));
      EXPECT_EQ(got.at(id).tokens, got.at(id + 100).tokens);
      ExpectLogprobsNear(got.at(id).logprobs, got.at(id + 100).logprobs);
    }
  }
  constexpr double kMarginTol = 1e-3;  // float32 engines agree to ~1e-5 on these logits
  int64_t compared = 0, ended_early = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const nlohmann::json& c = cases[i];
    const std::string what = std::string(c["case"]) + ", prompt " + std::to_string(int(c["prompt"]));
    const std::vector<int32_t> want = c["tokens"];
    const std::vector<double> margins = c["margins"];
    const RecordingOutbox::Sequence& s = got.at(100 + i);
    size_t n = 0;
    while (n < margins.size() && margins[n] >= kMarginTol) ++n;
    ASSERT_EQ(n, want.size()) << what << ": a reference margin below " << kMarginTol;
    EXPECT_EQ(s.tokens, want) << what;
    EXPECT_EQ(got.at(500 + i).tokens, std::vector<int32_t>(want.begin() + static_cast<std::ptrdiff_t>(want.size() / 2), want.end()))
        << what << ", resumed half way";
    compared += static_cast<int64_t>(n);
    ASSERT_TRUE(s.finished.has_value()) << what;
    if (want.size() < max_tokens) {
      ++ended_early;
      EXPECT_EQ(s.finished->reason(), Finished::REASON_STOP) << what;
    }
  }
  EXPECT_GE(ended_early, 1) << "no case reached an end id after min_tokens";
  EXPECT_GT(compared, 400);
}

// ----------------------------------------------------------------------------------------------
// Stopping.

TEST_F(WorkerLoopTest, ShutdownStopsTheLoopAndCancelsWhatRuns) {
  LoopHarness h;
  h.Push(Greedy(1, Prompt(2), 100));
  h.Run(3);
  h.Shutdown();
  h.inbox.Close();  // the coordinator ends the stream after Shutdown: still a clean stop
  EXPECT_FALSE(h.loop->RunOnce());
  EXPECT_EQ(h.loop->stop_reason(), StopReason::kShutdown);
  EXPECT_TRUE(h.loop->received_shutdown());
  EXPECT_FALSE(h.loop->RunOnce()) << "stays stopped";
  auto seqs = h.out.BySequence();
  EXPECT_EQ(seqs[1].finished->reason(), Finished::REASON_CANCELLED);
  EXPECT_EQ((*h.engine)->kv_cache().used_blocks(), 0);
  EXPECT_EQ(h.loop->iterations(), 4);
}

TEST_F(WorkerLoopTest, LostCoordinatorStopsTheLoop) {
  LoopHarness h;
  h.Push(Greedy(1, Prompt(2), 100));
  h.Run(2);
  h.inbox.Close();
  EXPECT_FALSE(h.loop->RunOnce());
  EXPECT_EQ(h.loop->stop_reason(), StopReason::kCoordinatorLost);
  EXPECT_FALSE(h.loop->received_shutdown());
  EXPECT_EQ((*h.engine)->kv_cache().used_blocks(), 0);
}

// An idle loop does not spin: it waits on the inbox (here up to 50 ms per iteration) and wakes as
// soon as a message arrives.
TEST_F(WorkerLoopTest, IdleLoopWaitsOnTheInboxAndWakesForAMessage) {
  auto engine = LoadLocalEngine(kGoldenDir);
  Inbox inbox;
  RecordingOutbox out;
  ServingLoopOptions lo;
  lo.idle_wait_min = std::chrono::milliseconds(50);
  lo.idle_wait_max = std::chrono::milliseconds(50);
  ServingLoop loop(**engine, inbox, out, lo);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(loop.RunOnce());
  const auto idle = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(idle, std::chrono::milliseconds(4 * 50));
  EXPECT_EQ(loop.steps(), 0u);

  lo.idle_wait_min = lo.idle_wait_max = std::chrono::seconds(60);
  ServingLoop slow(**engine, inbox, out, lo);
  std::thread pusher([&] {
    moe::v1::CoordinatorMessage m;
    *m.mutable_assign() = Greedy(1, {5, 6}, 1);
    inbox.Push(std::move(m));
  });
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(slow.RunOnce());  // idle step, then the wait ends when the Assign arrives
  pusher.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(10));
}

}  // namespace
}  // namespace moe::testing_ref
