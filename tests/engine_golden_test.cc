// The engine against transformers: the golden checkpoints' logits, router choices and greedy
// continuations (tiny; window: a sliding window, top-3 routing, GQA 3; tied: tied embeddings,
// head_dim apart from hidden / heads, top-1; yarn: YaRN RoPE scaling), and the default model's
// recorded samples.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "common/json_util.h"
#include "tests/support/engine_fixture.h"
#include "worker/generation.h"
#include "worker/tokenizer.h"

namespace moe::testing_ref {
namespace {

// Each test on the four golden checkpoints: tiny, window (a sliding window shorter than the
// prompts, top-3 routing, GQA 3), tied (tied embeddings, head_dim apart from hidden / heads,
// top-1, no GQA) and yarn (YaRN RoPE scaling, positions past its pretraining context).
class EngineGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = GetParam();
    golden_ = std::make_unique<Golden>(Golden::Load(dir_));
  }
  std::string dir_;
  std::unique_ptr<Golden> golden_;
};
INSTANTIATE_TEST_SUITE_P(Checkpoints, EngineGoldenTest, ::testing::Values(kGoldenDir, kWindowGoldenDir, kTiedGoldenDir, kYarnGoldenDir),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.substr(info.param.find_last_of('/') + 1);
                         });

TEST_P(EngineGoldenTest, PromptLogitsWithin1e4) {
  EngineOptions opts;
  opts.record_routing = true;
  auto e = LoadLocalEngine(dir_, opts);
  const int64_t V = (*e)->config().vocab_size;
  for (size_t p = 0; p < golden_->num_prompts(); ++p) {
    const std::vector<int32_t> prompt = golden_->prompt(p);
    ASSERT_TRUE((*e)->AddSequence(1).ok());
    StepOutput out = (*e)->Step({{1, prompt, true}}).value();
    (*e)->FreeSequence(1);
    const std::vector<float> ref = golden_->F32("logits." + std::to_string(p));
    ASSERT_EQ(out.chunks[0].logits.size(), ref.size());
    const double err = RelativeError(out.chunks[0].logits, ref, ref.size());
    EXPECT_LT(err, 1e-4) << "prompt " << p;
    RecordProperty("logits_rel_err_" + std::to_string(p), std::to_string(err));
    (void)V;
  }
}

// Top-k expert sets, per layer and token, equal transformers' wherever the golden routing margin
// (the gap between the k-th and (k+1)-th probability) is above float32 noise.
TEST_P(EngineGoldenTest, RouterTopKMatches) {
  EngineOptions opts;
  opts.record_routing = true;
  auto e = LoadLocalEngine(dir_, opts);
  const ModelConfig& c = (*e)->config();
  const int64_t E = c.num_experts, k = c.experts_per_token;
  int64_t compared = 0, skipped = 0;
  for (size_t p = 0; p < golden_->num_prompts(); ++p) {
    const std::vector<int32_t> prompt = golden_->prompt(p);
    const int64_t T = static_cast<int64_t>(prompt.size());
    ASSERT_TRUE((*e)->AddSequence(1).ok());
    ASSERT_TRUE((*e)->Step({{1, prompt, true}}).ok());
    (*e)->FreeSequence(1);
    const std::vector<float> router = golden_->F32("router." + std::to_string(p));  // [L, T, E]
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const MoeLayer::Record& rec = (*e)->last_routing()[l];
      ASSERT_EQ(rec.router_logits.size(), static_cast<size_t>(T * E));
      EXPECT_LT(RelativeError(rec.router_logits, router, T * E, 0, l * T * E), 1e-4);
      for (int64_t t = 0; t < T; ++t) {
        const float* z = router.data() + (l * T + t) * E;
        std::vector<double> prob(E);
        double mx = *std::max_element(z, z + E), sum = 0;
        for (int64_t x = 0; x < E; ++x) sum += prob[x] = std::exp(z[x] - mx);
        std::vector<int64_t> order(E);
        for (int64_t x = 0; x < E; ++x) order[x] = x;
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
        const double margin = (prob[order[k - 1]] - prob[order[k]]) / sum;
        if (margin < 1e-5) {
          ++skipped;
          continue;
        }
        std::vector<int64_t> want(order.begin(), order.begin() + k), got;
        for (int64_t s = 0; s < k; ++s) got.push_back(rec.routing.expert[t * k + s]);
        std::sort(want.begin(), want.end());
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, want) << "prompt " << p << " layer " << l << " token " << t;
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, skipped * 20) << "nearly every choice compared";
  EXPECT_GE(compared, dir_ == kTiedGoldenDir ? 90 : 200);  // tied, the smallest, has 92 choices
  RecordProperty("topk_compared", std::to_string(compared));
  RecordProperty("topk_skipped", std::to_string(skipped));
}

// Greedy continuations (prefill, then one decode step per token through the KV cache) equal the
// tokens transformers chose by full forwards.
TEST_P(EngineGoldenTest, GreedyContinuationsIdentical) {
  auto e = LoadLocalEngine(dir_);
  std::vector<GenerateRequest> reqs;
  for (size_t p = 0; p < golden_->num_prompts(); ++p) {
    GenerateRequest r;
    r.prompt = golden_->prompt(p);
    r.max_tokens = static_cast<int64_t>(golden_->greedy(p).size());
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  // All five in one batch: they prefill together, then decode together.
  std::vector<GenerateResult> res = GenerateAll(**e, reqs).value();
  for (size_t p = 0; p < reqs.size(); ++p) EXPECT_EQ(res[p].tokens, golden_->greedy(p)) << "prompt " << p;
  // The KV blocks all went back to the pool.
  EXPECT_EQ((*e)->kv_cache().used_blocks(), 0);
}

// The logits that chose each greedy token, from decode steps, match transformers' full forwards.
TEST_P(EngineGoldenTest, GreedyStepLogitsWithin1e4) {
  auto e = LoadLocalEngine(dir_);
  for (size_t p = 0; p < golden_->num_prompts(); ++p) {
    const std::vector<int32_t> prompt = golden_->prompt(p), greedy = golden_->greedy(p);
    const std::vector<float> ref = golden_->F32("greedy_logits." + std::to_string(p));
    const int64_t V = (*e)->config().vocab_size;
    ASSERT_TRUE((*e)->AddSequence(1).ok());
    std::vector<int32_t> next = prompt;
    for (size_t i = 0; i < greedy.size(); ++i) {
      StepOutput out = (*e)->Step({{1, next, false}}).value();
      EXPECT_LT(RelativeError(out.chunks[0].logits, ref, V, 0, i * V), 1e-4) << "prompt " << p << " step " << i;
      next = {greedy[i]};
    }
    (*e)->FreeSequence(1);
  }
}

TEST(DefaultModelTest, SamplesContinueExactly) {
  auto e = LoadLocalEngine(kDefaultModelDir);
  auto tok = Tokenizer::Load(kDefaultModelDir).value();
  nlohmann::json samples = ValueOrThrow(ReadJsonFile(kDefaultModelDir + "/samples.json"));
  ASSERT_EQ(samples["greedy_samples"].size(), 3u);
  for (const auto& s : samples["greedy_samples"]) {
    const std::vector<int32_t> prompt = tok->Encode(s["prompt"].get<std::string>());
    ASSERT_EQ(prompt, s["prompt_ids"].get<std::vector<int32_t>>());
    GenerateRequest r;
    r.prompt = prompt;
    r.max_tokens = 48;
    r.sampling.temperature = 0;
    std::vector<GenerateResult> res = GenerateAll(**e, {r}).value();
    EXPECT_EQ(res[0].tokens, s["greedy_ids"].get<std::vector<int32_t>>()) << s["prompt"];
    StreamingDetokenizer d(*tok, prompt);
    std::string text = s["prompt"].get<std::string>();
    for (int32_t id : res[0].tokens) text += d.Push(id);
    text += d.Flush();
    EXPECT_EQ(text, s["greedy_text"].get<std::string>());
  }
}

}  // namespace
}  // namespace moe::testing_ref
