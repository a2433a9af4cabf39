// Checks the float64 reference forward against the transformers golden data, so that tests of
// other configurations can trust it, and checks that random checkpoints for arbitrary configs
// load and run.
#include "tests/support/reference_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <set>

#include <gtest/gtest.h>

#include "common/json_util.h"
#include "tests/support/random_model.h"

namespace moe {
namespace {

using testing_ref::ReferenceForward;
using testing_ref::ReferenceOutput;

const std::string kGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";

// ||ours - ref|| / ||ref|| over whole tensors.
double RelativeError(const std::vector<double>& ours, const std::vector<float>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    diff += (ours[i] - ref[i]) * (ours[i] - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(diff / norm);
}

// A float32 tensor of expected.safetensors, checked to have `shape`.
std::vector<float> ReadGoldenF32(const SafetensorsFile& f, const std::string& name,
                                 const std::vector<int64_t>& shape) {
  auto it = f.tensors().find(name);
  if (it == f.tensors().end()) {
    ADD_FAILURE() << name << " missing from " << f.path();
    return {};
  }
  const TensorView& v = it->second;
  EXPECT_EQ(v.dtype, DType::kF32) << name;
  EXPECT_EQ(v.shape, shape) << name;
  if (v.dtype != DType::kF32 || v.shape != shape) return {};
  std::vector<float> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, out.size() * sizeof(float));
  return out;
}

// The k experts with the highest probability under `logits` (the golden router row), and the
// gap between the k-th and (k+1)-th probability: below it, rounding may legitimately swap them.
std::pair<std::set<int>, double> GoldenTopK(const float* logits, int64_t E, int64_t k) {
  std::vector<double> p(logits, logits + E);
  const double m = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& x : p) sum += (x = std::exp(x - m));
  for (double& x : p) x /= sum;
  std::vector<int> idx(static_cast<size_t>(E));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
  const double margin = k < E ? p[idx[k - 1]] - p[idx[k]] : 1.0;
  return {std::set<int>(idx.begin(), idx.begin() + k), margin};
}

TEST(ReferenceForwardTest, MatchesTransformersGolden) {
  auto config = ModelConfig::FromModelDir(kGoldenDir);
  ASSERT_TRUE(config.ok()) << config.status();
  const ModelConfig& c = *config;
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto expected_json = ReadJsonFile(kGoldenDir + "/expected.json");
  ASSERT_TRUE(expected_json.ok()) << expected_json.status();
  auto expected = SafetensorsFile::Open(kGoldenDir + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status();

  const auto& prompts = (*expected_json)["prompts"];
  ASSERT_EQ(prompts.size(), 5u);
  // The router margins of the golden prompts go down to ~7e-5; routing probabilities from logits
  // within 1e-6 relative error move by far less than this, so above it the sets must agree.
  constexpr double kMarginSlack = 1e-5;
  double worst_logits = 0, worst_router = 0;
  int64_t compared = 0, skipped = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    const auto tokens = prompts[p].get<std::vector<int32_t>>();
    const int64_t T = static_cast<int64_t>(tokens.size());
    auto out = ReferenceForward(c, **ckpt, tokens);
    ASSERT_TRUE(out.ok()) << out.status();

    const auto logits = ReadGoldenF32(**expected, "logits." + std::to_string(p), {T, c.vocab_size});
    const auto router = ReadGoldenF32(**expected, "router." + std::to_string(p),
                                      {c.num_layers, T, c.num_experts});
    ASSERT_FALSE(logits.empty());
    ASSERT_FALSE(router.empty());
    const double e_logits = RelativeError(out->logits, logits);
    const double e_router = RelativeError(out->router_logits, router);
    EXPECT_LT(e_logits, 1e-6) << "prompt " << p << " (T=" << T << ") logits";
    EXPECT_LT(e_router, 1e-6) << "prompt " << p << " (T=" << T << ") router logits";
    worst_logits = std::max(worst_logits, e_logits);
    worst_router = std::max(worst_router, e_router);

    for (int64_t l = 0; l < c.num_layers; ++l) {
      for (int64_t t = 0; t < T; ++t) {
        const float* row = &router[(l * T + t) * c.num_experts];
        const auto [want, margin] = GoldenTopK(row, c.num_experts, c.experts_per_token);
        const auto& ours = out->topk[l][t];
        ASSERT_EQ(static_cast<int64_t>(ours.size()), c.experts_per_token);
        if (margin < kMarginSlack) {
          ++skipped;
          continue;
        }
        ++compared;
        EXPECT_EQ(std::set<int>(ours.begin(), ours.end()), want)
            << "prompt " << p << " layer " << l << " token " << t << " margin " << margin;
      }
    }
  }
  std::cout << "max relative error vs golden: logits " << worst_logits << ", router logits "
            << worst_router << "; top-k compared at " << compared << " (layer, token) pairs, "
            << skipped << " skipped for small margin\n";
  RecordProperty("max_rel_err_logits", std::to_string(worst_logits));
  RecordProperty("max_rel_err_router", std::to_string(worst_router));
}

TEST(ReferenceForwardTest, TopKIsInDescendingProbabilityOrder) {
  auto c = ModelConfig::FromModelDir(kGoldenDir);
  ASSERT_TRUE(c.ok()) << c.status();
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto out = ReferenceForward(*c, **ckpt, {5, 17, 300, 4});
  ASSERT_TRUE(out.ok()) << out.status();
  for (int64_t l = 0; l < out->layers; ++l) {
    for (int64_t t = 0; t < out->T; ++t) {
      const auto& k = out->topk[l][t];
      for (size_t i = 1; i < k.size(); ++i) {
        // Softmax is monotonic, so descending probability is descending logit.
        EXPECT_GE(out->router_logit(l, t, k[i - 1]), out->router_logit(l, t, k[i]));
      }
    }
  }
}

TEST(ReferenceForwardTest, RejectsBadTokens) {
  auto c = ModelConfig::FromModelDir(kGoldenDir);
  ASSERT_TRUE(c.ok()) << c.status();
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ReferenceForward(*c, **ckpt, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceForward(*c, **ckpt, {1, static_cast<int32_t>(c->vocab_size)}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceForward(*c, **ckpt, {-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

// A config unlike the golden one in every way the engine must not hard-code.
ModelConfig UnusualConfig() {
  ModelConfig c;
  c.vocab_size = 96;
  c.hidden_size = 48;
  c.intermediate_size = 40;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;  // != hidden_size / num_heads = 12
  c.num_experts = 3;
  c.experts_per_token = 1;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.sliding_window = 5;
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 256;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 7};
  return c;
}

TEST(RandomModelTest, WritesLoadableShardedCheckpoint) {
  const ModelConfig c = UnusualConfig();
  const std::string dir = testing_ref::MakeTempDir("random_model_test_");
  ASSERT_TRUE(testing_ref::WriteRandomModel(dir, c, /*seed=*/42, /*num_shards=*/2).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model-00002-of-00002.safetensors"));

  auto back = ModelConfig::FromModelDir(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->vocab_size, c.vocab_size);
  EXPECT_EQ(back->hidden_size, c.hidden_size);
  EXPECT_EQ(back->intermediate_size, c.intermediate_size);
  EXPECT_EQ(back->num_layers, c.num_layers);
  EXPECT_EQ(back->num_heads, c.num_heads);
  EXPECT_EQ(back->num_kv_heads, c.num_kv_heads);
  EXPECT_EQ(back->head_dim, c.head_dim);
  EXPECT_EQ(back->num_experts, c.num_experts);
  EXPECT_EQ(back->experts_per_token, c.experts_per_token);
  EXPECT_EQ(back->rope_theta, c.rope_theta);
  EXPECT_EQ(back->rms_norm_eps, c.rms_norm_eps);
  EXPECT_EQ(back->sliding_window, c.sliding_window);
  EXPECT_EQ(back->tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(back->max_position_embeddings, c.max_position_embeddings);
  EXPECT_EQ(back->bos_token_id, c.bos_token_id);
  EXPECT_EQ(back->eos_token_ids, c.eos_token_ids);

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // Every tensor of the architecture, and nothing else: tied embeddings mean no lm_head.
  const size_t per_layer = 7 + 3 * static_cast<size_t>(c.num_experts);
  EXPECT_EQ((*ckpt)->Names().size(), 2 + per_layer * static_cast<size_t>(c.num_layers));
  EXPECT_FALSE((*ckpt)->Has("lm_head.weight"));
  auto q = (*ckpt)->Get("model.layers.1.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->dtype, DType::kBF16);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{c.q_dim(), c.hidden_size}));

  // T = 12 > sliding_window, so the window actually masks something.
  const std::vector<int32_t> tokens = {1, 5, 9, 95, 0, 33, 33, 33, 60, 2, 70, 11};
  auto out = ReferenceForward(*back, **ckpt, tokens);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->logits.size(), tokens.size() * static_cast<size_t>(c.vocab_size));
  ASSERT_EQ(out->router_logits.size(), tokens.size() * static_cast<size_t>(c.num_layers * c.num_experts));
  for (double x : out->logits) ASSERT_TRUE(std::isfinite(x));
  for (double x : out->router_logits) ASSERT_TRUE(std::isfinite(x));
  // Not degenerate: logits have spread, and the router does not send every token to one expert.
  const auto [lo, hi] = std::minmax_element(out->logits.begin(), out->logits.end());
  EXPECT_GT(*hi - *lo, 1.0);
  std::set<int> used;
  for (const auto& layer : out->topk) {
    for (const auto& k : layer) used.insert(k.begin(), k.end());
  }
  EXPECT_GT(used.size(), 1u);

  // The window only changes positions that can see past it: with full attention, the first
  // sliding_window positions are identical and later ones differ.
  ModelConfig full = *back;
  full.sliding_window.reset();
  auto unwindowed = ReferenceForward(full, **ckpt, tokens);
  ASSERT_TRUE(unwindowed.ok()) << unwindowed.status();
  const int64_t V = c.vocab_size, w = *c.sliding_window;
  for (int64_t t = 0; t < static_cast<int64_t>(tokens.size()); ++t) {
    double diff = 0;
    for (int64_t v = 0; v < V; ++v) {
      diff = std::max(diff, std::abs(out->logit(t, v) - unwindowed->logit(t, v)));
    }
    if (t < w) {
      EXPECT_EQ(diff, 0.0) << "position " << t;
    } else {
      EXPECT_GT(diff, 0.0) << "position " << t;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(RandomModelTest, SameSeedSameWeightsWhateverTheSharding) {
  ModelConfig c = UnusualConfig();
  c.tie_word_embeddings = false;
  const std::string one = testing_ref::MakeTempDir("random_model_one_");
  const std::string three = testing_ref::MakeTempDir("random_model_three_");
  ASSERT_TRUE(testing_ref::WriteRandomModel(one, c, 7, 1, DType::kF32).ok());
  ASSERT_TRUE(testing_ref::WriteRandomModel(three, c, 7, 3, DType::kF32).ok());
  EXPECT_TRUE(std::filesystem::exists(one + "/model.safetensors"));
  auto a = Checkpoint::Open(one);
  auto b = Checkpoint::Open(three);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ((*a)->Names(), (*b)->Names());
  EXPECT_TRUE((*a)->Has("lm_head.weight"));
  for (const std::string& name : (*a)->Names()) {
    auto x = (*a)->Get(name);
    auto y = (*b)->Get(name);
    ASSERT_TRUE(x.ok() && y.ok()) << name;
    ASSERT_EQ(x->nbytes, y->nbytes) << name;
    EXPECT_EQ(std::memcmp(x->data, y->data, x->nbytes), 0) << name;
  }
  std::filesystem::remove_all(one);
  std::filesystem::remove_all(three);
}

}  // namespace
}  // namespace moe
