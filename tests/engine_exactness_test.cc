// The engine against itself and against the float64 reference: decoding through the paged KV
// cache equals a full forward, a batched step equals single runs, and arbitrary Mixtral-family
// configurations (not just the shipped ones) match an independent double-precision forward.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "tests/support/engine_fixture.h"
#include "tests/support/random_model.h"
#include "tests/support/reference_forward.h"
#include "worker/sampler.h"
#include "worker/token_mask.h"

namespace moe::testing_ref {
namespace {

std::vector<float> FullForward(Engine& e, const std::vector<int32_t>& tokens) {
  EXPECT_TRUE(e.AddSequence(99).ok());
  StepOutput out = e.Step({{99, tokens, true}}).value();
  e.FreeSequence(99);
  return out.chunks[0].logits;
}

TEST(EngineExactnessTest, DecodeThroughKvCacheEqualsFullForward) {
  Golden g = Golden::Load();
  for (int64_t block : {1, 16, 7}) {
    EngineOptions opts;
    opts.kv_block_size = block;
    auto e = LoadLocalEngine(kGoldenDir, opts);
    const int64_t V = (*e)->config().vocab_size;
    const std::vector<int32_t> tokens = g.prompt(4);  // 130 tokens
    const std::vector<float> full = FullForward(**e, tokens);
    // Prefill 70 in chunks of 23 (chunked prefill), then decode one token a step.
    ASSERT_TRUE((*e)->AddSequence(1).ok());
    size_t pos = 0;
    while (pos < tokens.size()) {
      const size_t n = pos < 70 ? std::min<size_t>(23, 70 - pos) : 1;
      std::vector<int32_t> chunk(tokens.begin() + pos, tokens.begin() + pos + n);
      StepOutput out = (*e)->Step({{1, chunk, true}}).value();
      EXPECT_EQ(out.chunks[0].first_position, static_cast<int64_t>(pos));
      EXPECT_LT(RelativeError(out.chunks[0].logits, full, n * V, 0, pos * V), 1e-5)
          << "block " << block << " position " << pos;
      pos += n;
    }
    EXPECT_EQ((*e)->kv_cache().used_blocks(), (*e)->kv_cache().BlocksFor(130));
    (*e)->FreeSequence(1);
    EXPECT_EQ((*e)->kv_cache().used_blocks(), 0);
  }
}

TEST(EngineExactnessTest, BatchOfFivePromptsEqualsSingleRuns) {
  Golden g = Golden::Load();
  auto e = LoadLocalEngine(kGoldenDir);
  std::vector<SequenceChunk> batch;
  for (size_t p = 0; p < g.num_prompts(); ++p) {
    ASSERT_TRUE((*e)->AddSequence(static_cast<int64_t>(p)).ok());
    batch.push_back({static_cast<int64_t>(p), g.prompt(p), true});
  }
  StepOutput out = (*e)->Step(batch).value();
  EXPECT_EQ(out.global_rows, 1 + 5 + 17 + 64 + 130);
  for (size_t p = 0; p < g.num_prompts(); ++p) {
    (*e)->FreeSequence(static_cast<int64_t>(p));
    const std::vector<float> single = FullForward(**e, g.prompt(p));
    EXPECT_LT(RelativeError(out.chunks[p].logits, single, single.size()), 1e-5) << "prompt " << p;
  }
}

// One step that carries sequences at different positions: one decoding, one prefilling, one
// continuing a chunked prefill.
TEST(EngineExactnessTest, MixedPrefillAndDecodeStep) {
  Golden g = Golden::Load();
  auto e = LoadLocalEngine(kGoldenDir);
  const int64_t V = (*e)->config().vocab_size;
  const std::vector<int32_t> a = g.prompt(3), b = g.prompt(2), c = g.prompt(4);
  const std::vector<float> fa = FullForward(**e, a), fb = FullForward(**e, b), fc = FullForward(**e, c);
  for (int64_t id : {1, 2, 3}) ASSERT_TRUE((*e)->AddSequence(id).ok());
  ASSERT_TRUE((*e)->Step({{1, std::vector<int32_t>(a.begin(), a.end() - 1), false},
                          {3, std::vector<int32_t>(c.begin(), c.begin() + 50), false}})
                  .ok());
  StepOutput out = (*e)->Step({{1, {a.back()}, false},
                               {2, b, true},
                               {3, std::vector<int32_t>(c.begin() + 50, c.end()), true}})
                       .value();
  EXPECT_LT(RelativeError(out.chunks[0].logits, fa, V, 0, (a.size() - 1) * V), 1e-5);
  EXPECT_LT(RelativeError(out.chunks[1].logits, fb, fb.size()), 1e-5);
  EXPECT_LT(RelativeError(out.chunks[2].logits, fc, (c.size() - 50) * V, 0, 50 * V), 1e-5);
}

// A chunk that wants only its next token gets the pick of the logits it would have had
// (PickToken, greedy or sampled), and no logits; next to chunks that get theirs. Bad sampling
// parameters and sample_next with all_logits are refused, naming what is wrong.
TEST(EngineExactnessTest, SampleNextReturnsThePickOfTheLogits) {
  Golden g = Golden::Load();
  auto e = LoadLocalEngine(kGoldenDir);
  const SamplingParams greedy{.temperature = 0.f};
  const SamplingParams sampled{.temperature = 0.9f, .top_k = 20, .top_p = 0.9f, .seed = 3};
  int64_t id = 1;
  for (const SamplingParams& sp : {greedy, sampled}) {
    const int64_t full_a = id++, full_b = id++, pick_a = id++, pick_b = id++;
    for (int64_t s : {full_a, full_b, pick_a, pick_b}) ASSERT_TRUE((*e)->AddSequence(s).ok());
    const std::vector<int32_t> a = g.prompt(3), b = g.prompt(2);
    StepOutput full = (*e)->Step({{full_a, a, false}, {full_b, b, false}}).value();
    SequenceChunk pa{pick_a, a, false}, pb{pick_b, b, false};
    pa.sample_next = SampleNext{sp, 4};
    pa.sample_next->top_logprobs = 3;
    StepOutput picked = (*e)->Step({pa, pb}).value();
    ASSERT_EQ(picked.chunks.size(), 2u);
    const TokenPick want = PickToken(full.chunks[0].logits, sp, 4);
    EXPECT_EQ(picked.chunks[0].rows, 0);
    EXPECT_TRUE(picked.chunks[0].logits.empty());
    EXPECT_EQ(picked.chunks[0].token, want.token);
    EXPECT_EQ(picked.chunks[0].token_logprob, want.logprob);
    EXPECT_EQ(picked.chunks[0].first_position, static_cast<int64_t>(a.size()) - 1);
    const std::vector<TokenPick> want_top = TopTokens(full.chunks[0].logits, 3);
    ASSERT_EQ(picked.chunks[0].top.size(), 3u);
    for (size_t j = 0; j < 3; ++j) {
      EXPECT_EQ(picked.chunks[0].top[j].token, want_top[j].token);
      EXPECT_EQ(picked.chunks[0].top[j].logprob, want_top[j].logprob);
    }
    EXPECT_TRUE(picked.chunks[1].top.empty());
    EXPECT_EQ(picked.chunks[1].logits, full.chunks[1].logits);
    EXPECT_EQ((*e)->SequenceLength(pick_a), static_cast<int64_t>(a.size()));
    // Under allowed ids that ban the unconstrained pick: PickToken's masked pick, the raw logprob.
    const int64_t masked_id = id++;
    ASSERT_TRUE((*e)->AddSequence(masked_id).ok());
    TokenMask allowed((*e)->config().vocab_size);
    for (int64_t t = 0; t < allowed.size(); t += 3) allowed.Ban(t);
    allowed.Ban(want.token);
    SequenceChunk pm{masked_id, a, false};
    pm.sample_next = SampleNext{sp, 4, {allowed.words().begin(), allowed.words().end()}};
    const StepOutput masked = (*e)->Step({pm}).value();
    const TokenPick want_masked = PickToken(full.chunks[0].logits, sp, 4, allowed.words());
    EXPECT_NE(masked.chunks[0].token, want.token);
    EXPECT_TRUE(allowed.allowed(masked.chunks[0].token));
    EXPECT_EQ(masked.chunks[0].token, want_masked.token);
    // (a step of its own: the row may differ from the two-chunk step's in the last bits)
    EXPECT_NEAR(masked.chunks[0].token_logprob, want_masked.logprob, 1e-5);
  }
  SequenceChunk bad{1, {5}, true};
  bad.sample_next = SampleNext{greedy, 0};
  absl::Status s = (*e)->Step({bad}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("sample_next and all_logits"), std::string::npos) << s;
  bad.all_logits = false;
  bad.sample_next->params.top_p = 1.5f;
  s = (*e)->Step({bad}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("top_p"), std::string::npos) << s;
  bad.sample_next->params.top_p = 1.0f;
  bad.sample_next->allowed = {~uint64_t{0}};  // one word for a vocabulary of more than 64 ids
  s = (*e)->Step({bad}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("allowed ids' mask has 1 words"), std::string::npos) << s;
  bad.sample_next->allowed.clear();
  bad.sample_next->top_logprobs = kMaxTopLogprobs + 1;
  s = (*e)->Step({bad}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("top_logprobs 21 above 20"), std::string::npos) << s;
  EXPECT_EQ((*e)->SequenceLength(1), static_cast<int64_t>(g.prompt(3).size()));  // nothing changed
}

// A chunk with score gets each row's ScoreRow over the logits it would have had (its target's
// LogSoftmax value and rank, the top alternatives) instead of the rows; -1 targets get none. Bad
// scores are refused naming what is wrong, and change nothing.
TEST(EngineExactnessTest, ScoreReturnsEachRowsScoresOfTheLogits) {
  Golden g = Golden::Load();
  auto e = LoadLocalEngine(kGoldenDir);
  const int64_t V = (*e)->config().vocab_size;
  const std::vector<int32_t> a = g.prompt(3);
  ASSERT_TRUE((*e)->AddSequence(1).ok());
  ASSERT_TRUE((*e)->AddSequence(2).ok());
  SequenceChunk scored{2, a, true};
  scored.score = ScoreTargets{{}, 4};
  for (size_t i = 0; i < a.size(); ++i) scored.score->targets.push_back(i + 1 < a.size() ? a[i + 1] : -1);
  // Each in a step of its own, so that both rows' logits come from the same GEMM shapes: a row's
  // last bits may depend on where it sits in a batch (OpenBLAS's kernels for AVX-512 differ so).
  const StepOutput full_out = (*e)->Step({{1, a, true}}).value();
  const StepOutput scored_out = (*e)->Step({scored}).value();
  const ChunkLogits& full = full_out.chunks[0];
  const ChunkLogits& got = scored_out.chunks[0];
  EXPECT_TRUE(got.logits.empty());
  EXPECT_EQ(got.rows, static_cast<int64_t>(a.size()));
  ASSERT_EQ(got.scores.size(), a.size());
  for (size_t r = 0; r < a.size(); ++r) {
    const RowScore want = ScoreRow(std::span<const float>(full.logits.data() + r * V, static_cast<size_t>(V)),
                                   scored.score->targets[r], 4);
    EXPECT_EQ(got.scores[r].logprob, want.logprob) << r;
    EXPECT_EQ(got.scores[r].rank, want.rank) << r;
    ASSERT_EQ(got.scores[r].top.size(), 4u);
    for (size_t j = 0; j < 4; ++j) EXPECT_EQ(got.scores[r].top[j].token, want.top[j].token) << r;
  }
  EXPECT_EQ(got.scores.back().rank, 0u);  // the last row's target is -1
  ASSERT_TRUE((*e)->AddSequence(3).ok());
  SequenceChunk bad{3, {5, 6}, false};
  bad.score = ScoreTargets{{6, -1}, 0};
  absl::Status st = (*e)->Step({bad}).status();
  EXPECT_NE(std::string(st.message()).find("score needs all_logits"), std::string::npos) << st;
  bad.all_logits = true;
  bad.score->targets = {6};
  st = (*e)->Step({bad}).status();
  EXPECT_NE(std::string(st.message()).find("1 score targets for 2 tokens"), std::string::npos) << st;
  bad.score->targets = {6, static_cast<int32_t>(V)};
  st = (*e)->Step({bad}).status();
  EXPECT_NE(std::string(st.message()).find("score target"), std::string::npos) << st;
  bad.score->targets = {6, -1};
  bad.score->top = kMaxTopLogprobs + 1;
  st = (*e)->Step({bad}).status();
  EXPECT_NE(std::string(st.message()).find("score top 21 above 20"), std::string::npos) << st;
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->SequenceLength(3), 0);
}

TEST(EngineExactnessTest, StepRejectsBadInputAndChangesNothing) {
  auto e = LoadLocalEngine(kGoldenDir);
  const ModelConfig& c = (*e)->config();
  ASSERT_TRUE((*e)->AddSequence(1).ok());
  EXPECT_EQ((*e)->Step({{2, {5}, false}}).status().code(), absl::StatusCode::kNotFound);
  absl::Status s = (*e)->Step({{1, {5, static_cast<int32_t>(c.vocab_size)}, false}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("outside the vocabulary"), std::string::npos) << s;
  EXPECT_EQ((*e)->Step({{1, {-1}, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->Step({{1, {}, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->Step({{1, {5}, false}, {1, {6}, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> too_long(static_cast<size_t>(c.max_position_embeddings + 1), 3);
  EXPECT_EQ((*e)->Step({{1, too_long, false}}).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*e)->SequenceLength(1), 0);
  EXPECT_EQ((*e)->kv_cache().used_blocks(), 0);
  EXPECT_TRUE((*e)->Step({{1, {5, 6}, false}}).ok());
  EXPECT_EQ((*e)->SequenceLength(1), 2);
}

TEST(EngineExactnessTest, KvCacheExhaustionIsAnErrorNotACrash) {
  EngineOptions opts;
  opts.kv_block_size = 4;
  opts.kv_tokens = 16;  // 4 blocks
  auto e = LoadLocalEngine(kGoldenDir, opts);
  ASSERT_TRUE((*e)->AddSequence(1).ok());
  ASSERT_TRUE((*e)->AddSequence(2).ok());
  ASSERT_TRUE((*e)->Step({{1, std::vector<int32_t>(10, 7), false}}).ok());  // 3 blocks
  absl::Status s = (*e)->Step({{2, std::vector<int32_t>(5, 7), false}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ((*e)->kv_cache().used_blocks(), 3);
  (*e)->FreeSequence(1);
  EXPECT_TRUE((*e)->Step({{2, std::vector<int32_t>(5, 7), false}}).ok());
  EXPECT_EQ((*e)->kv_cache().used_blocks(), 2);
}

struct ConfigCase {
  const char* name;
  int64_t vocab, hidden, inter, layers, heads, kv_heads, head_dim, experts, top_k;
  std::optional<int64_t> window;
  bool tied;
};
void PrintTo(const ConfigCase& k, std::ostream* os) { *os << k.name; }

ModelConfig MakeConfig(const ConfigCase& k) {
  ModelConfig c;
  c.vocab_size = k.vocab;
  c.hidden_size = k.hidden;
  c.intermediate_size = k.inter;
  c.num_layers = k.layers;
  c.num_heads = k.heads;
  c.num_kv_heads = k.kv_heads;
  c.head_dim = k.head_dim;
  c.num_experts = k.experts;
  c.experts_per_token = k.top_k;
  c.sliding_window = k.window;
  c.tie_word_embeddings = k.tied;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000.0;
  return c;
}

class RandomConfigTest : public ::testing::TestWithParam<ConfigCase> {};

// Any Mixtral-family configuration: the engine (float32, paged cache, decode) against the float64
// reference on a random checkpoint of that shape.
TEST_P(RandomConfigTest, MatchesFloat64Reference) {
  const ConfigCase& k = GetParam();
  const ModelConfig c = MakeConfig(k);
  const std::string dir = MakeTempDir(std::string("moe_cfg_") + k.name);
  ASSERT_TRUE(WriteRandomModel(dir, c, /*seed=*/17, /*num_shards=*/2).ok());
  std::mt19937 rng(5);
  std::vector<int32_t> tokens(40);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);

  auto ckpt = Checkpoint::Open(dir).value();
  ReferenceOutput ref = ReferenceForward(c, *ckpt, tokens).value();
  EngineOptions opts;
  opts.kv_block_size = 8;
  auto e = LoadLocalEngine(dir, opts);
  const std::vector<float> full = FullForward(**e, tokens);
  EXPECT_LT(RelativeError(full, ref.logits, ref.logits.size()), 1e-4) << k.name;
  // Prefill 25, then decode the rest one token a step (crosses the sliding window).
  ASSERT_TRUE((*e)->AddSequence(1).ok());
  const int64_t V = c.vocab_size;
  StepOutput pre = (*e)->Step({{1, std::vector<int32_t>(tokens.begin(), tokens.begin() + 25), true}}).value();
  EXPECT_LT(RelativeError(pre.chunks[0].logits, ref.logits, 25 * V), 1e-4);
  for (size_t t = 25; t < tokens.size(); ++t) {
    StepOutput out = (*e)->Step({{1, {tokens[t]}, false}}).value();
    EXPECT_LT(RelativeError(out.chunks[0].logits, ref.logits, V, 0, t * V), 1e-4) << k.name << " t=" << t;
  }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, RandomConfigTest,
    ::testing::Values(
        // name, vocab, hidden, inter, layers, heads, kv_heads, head_dim, experts, top_k, window, tied
        ConfigCase{"mixtral_like", 300, 64, 96, 2, 8, 2, 8, 8, 2, std::nullopt, false},
        ConfigCase{"head_dim_differs", 257, 48, 80, 2, 4, 2, 24, 4, 2, std::nullopt, false},
        ConfigCase{"sliding_window_7", 200, 32, 64, 3, 4, 1, 8, 6, 2, 7, false},
        ConfigCase{"tied_top1_of_3", 128, 40, 56, 1, 5, 5, 8, 3, 1, std::nullopt, true},
        ConfigCase{"top3_of_5_mqa", 150, 64, 72, 2, 4, 1, 16, 5, 3, 16, false},
        ConfigCase{"all_experts_16", 100, 32, 40, 2, 2, 2, 16, 16, 16, std::nullopt, false}),
    [](const ::testing::TestParamInfo<ConfigCase>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace moe::testing_ref
