// Sampler tests against independent double-precision references written here: a direct softmax,
// a full-sort nucleus, and a straightforward sort-and-walk sampler that the fast selection-based
// implementation must agree with token for token.
#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "worker/token_mask.h"

namespace moe {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

SamplingParams Params(float temperature, int32_t top_k = 0, float top_p = 1.0f,
                      uint64_t seed = 1234) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

// Plain softmax of logits / temperature in double.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (float l : logits) m = std::max(m, l / temperature);
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] / temperature - m);
  for (double& x : p) x /= sum;
  return p;
}

// Token ids by probability descending, ties to the lower id.
std::vector<int32_t> ByProbability(const std::vector<double>& probs) {
  std::vector<int32_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
  return order;
}

// The smallest probability-sorted prefix whose mass reaches top_p.
std::set<int32_t> Nucleus(const std::vector<double>& probs, double top_p) {
  std::set<int32_t> kept;
  double cum = 0;
  for (int32_t id : ByProbability(probs)) {
    kept.insert(id);
    cum += probs[id];
    if (cum >= top_p) break;
  }
  return kept;
}

// Reference sampler: the documented pipeline done the obvious way, with full sorts. The kept
// tokens (probability order) and their unnormalised weights do not depend on the step, so they
// are computed once and each step only walks them.
struct ReferenceKept {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

ReferenceKept ReferenceNucleus(const std::vector<float>& logits, const SamplingParams& p) {
  std::vector<double> x(logits.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = std::isnan(logits[i]) ? -std::numeric_limits<double>::infinity()
                                 : logits[i] / static_cast<double>(p.temperature);
  }
  std::vector<int32_t> order = ByProbability(x);  // descending scaled logit, ties to lower id
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < order.size()) order.resize(p.top_k);
  const double m = x[order[0]];
  double total = 0;
  for (int32_t id : order) total += std::exp(x[id] - m);
  ReferenceKept kept;
  double cum = 0;
  for (int32_t id : order) {
    kept.ids.push_back(id);
    kept.weights.push_back(std::exp(x[id] - m));
    cum += kept.weights.back() / total;
    if (p.top_p < 1.0f && cum >= p.top_p) break;
  }
  if (p.min_p > 0.0f) {  // Hugging Face's MinPLogitsWarper: probabilities of what is left, against the top one
    const double left = std::accumulate(kept.weights.begin(), kept.weights.end(), 0.0);
    const double top = kept.weights[0] / left;
    ReferenceKept above;
    for (size_t i = 0; i < kept.ids.size(); ++i) {
      if (kept.weights[i] / left >= p.min_p * top) {
        above.ids.push_back(kept.ids[i]);
        above.weights.push_back(kept.weights[i]);
      }
    }
    return above;
  }
  return kept;
}

SamplingParams WithMinP(SamplingParams p, float min_p) {
  p.min_p = min_p;
  return p;
}

int32_t ReferencePick(const ReferenceKept& kept, double u) {
  const double target = u * std::accumulate(kept.weights.begin(), kept.weights.end(), 0.0);
  double cum = 0;
  for (size_t i = 0; i < kept.ids.size(); ++i) {
    cum += kept.weights[i];
    if (cum >= target) return kept.ids[i];
  }
  return kept.ids.back();
}

std::vector<double> Frequencies(const std::vector<float>& logits, const SamplingParams& p,
                                int steps) {
  std::vector<double> freq(logits.size(), 0.0);
  for (int s = 0; s < steps; ++s) freq[SampleToken(logits, p, s)] += 1.0 / steps;
  return freq;
}

std::vector<float> RandomLogits(size_t n, float scale, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> logits(n);
  for (float& l : logits) l = dist(gen);
  return logits;
}

const std::vector<float> kSix = {1.0f, 2.5f, 0.3f, 2.0f, -1.0f, 1.7f};

// --- Greedy -----------------------------------------------------------------------------------

TEST(SamplerGreedy, PicksArgmax) {
  EXPECT_EQ(SampleToken(kSix, Params(0.0f), 0), 1);
  const std::vector<float> big = RandomLogits(32000, 3.0f, 7);
  const auto best = std::max_element(big.begin(), big.end()) - big.begin();
  EXPECT_EQ(SampleToken(big, Params(0.0f), 0), best);
}

TEST(SamplerGreedy, TiesGoToLowestIndex) {
  EXPECT_EQ(SampleToken(std::vector<float>{1.0f, 3.0f, 0.0f, 3.0f, 3.0f}, Params(0.0f), 0), 1);
  EXPECT_EQ(SampleToken(std::vector<float>{2.0f, 2.0f}, Params(0.0f), 5), 0);
}

TEST(SamplerGreedy, IgnoresTopKTopPAndStep) {
  for (uint64_t step = 0; step < 50; ++step) {
    EXPECT_EQ(SampleToken(kSix, Params(0.0f, 3, 0.2f, step * 17), step), 1);
  }
}

TEST(SamplerGreedy, NaNCountsAsNegativeInfinity) {
  EXPECT_EQ(SampleToken(std::vector<float>{kNaN, 0.5f, kNaN, 1.0f}, Params(0.0f), 0), 3);
  EXPECT_EQ(SampleToken(std::vector<float>{kNaN, -kInf, kNaN}, Params(0.0f), 0), 0);
}

// PickToken: SampleToken's token and LogSoftmax's value there, bit for bit, greedy or sampled.
TEST(SamplerPick, PickTokenEqualsSampleTokenAndLogSoftmax) {
  std::vector<std::vector<float>> rows = {kSix,
                                          {1.0f, 3.0f, 0.0f, 3.0f, 3.0f},
                                          {kNaN, 0.5f, kNaN, 1.0f},
                                          {kNaN, -kInf, kNaN},
                                          {-kInf, -kInf},
                                          {0.5f, kInf, 2.0f, kInf},
                                          {7.0f}};
  for (uint64_t seed = 0; seed < 5; ++seed) rows.push_back(RandomLogits(32000, 4.0f, 100 + seed));
  std::vector<SamplingParams> params = {Params(0.0f), Params(1.0f), Params(0.7f, 5), Params(1.3f, 0, 0.8f)};
  for (SamplingParams& p : params) p.seed = 9;
  for (const std::vector<float>& row : rows) {
    std::vector<float> lsm(row.size());
    LogSoftmax(row, lsm);
    for (const SamplingParams& sp : params) {
      for (uint64_t step = 0; step < 3; ++step) {
        const TokenPick p = PickToken(row, sp, step);
        EXPECT_EQ(p.token, SampleToken(row, sp, step));
        EXPECT_EQ(p.logprob, lsm[static_cast<size_t>(p.token)]) << "row of " << row.size();
      }
    }
  }
}

// With allowed ids: the pick is SampleToken's over the row with every banned id at -inf, written
// out here element by element; the logprob stays the raw row's.
TEST(SamplerPick, PickTokenWithAllowedIdsSamplesTheMaskedRow) {
  const std::vector<float> row = RandomLogits(1000, 4.0f, 7);
  std::vector<float> lsm(row.size());
  LogSoftmax(row, lsm);
  const int64_t argmax = std::max_element(row.begin(), row.end()) - row.begin();
  TokenMask odd(1000), top_banned(1000), one(1000);
  for (int64_t i = 0; i < 1000; i += 2) odd.Ban(i);
  top_banned.Ban(argmax);
  one.BanAll();
  one.Allow(998);
  for (const TokenMask* m : {&odd, &top_banned, &one}) {
    std::vector<float> masked = row;
    for (int64_t i = 0; i < 1000; ++i) {
      if (!m->allowed(i)) masked[static_cast<size_t>(i)] = -kInf;
    }
    for (const SamplingParams& sp : {Params(0.0f), Params(1.0f), Params(0.7f, 5), Params(1.3f, 0, 0.8f)}) {
      for (uint64_t step = 0; step < 4; ++step) {
        const TokenPick p = PickToken(row, sp, step, m->words());
        EXPECT_EQ(p.token, SampleToken(masked, sp, step));
        EXPECT_TRUE(m->allowed(p.token));
        EXPECT_EQ(p.logprob, lsm[static_cast<size_t>(p.token)]);
      }
    }
  }
  EXPECT_EQ(PickToken(row, Params(0.0f), 0, one.words()).token, 998);
  EXPECT_NE(PickToken(row, Params(0.0f), 0, top_banned.words()).token, argmax);
}

// TopTokens: the n largest logits (NaN as -inf, ties to the lower id), in that order, with their
// LogSoftmax values; the whole row when it is shorter.
TEST(SamplerPick, TopTokensAreTheLargestLogitsWithTheirLogSoftmax) {
  const std::vector<float> row = {1.0f, kNaN, 3.0f, 3.0f, -kInf, 0.5f, 2.0f};
  std::vector<float> lsm(row.size());
  LogSoftmax(row, lsm);
  const std::vector<TokenPick> top = TopTokens(row, 4);
  ASSERT_EQ(top.size(), 4u);
  const int32_t want[4] = {2, 3, 6, 0};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(top[i].token, want[i]);
    EXPECT_EQ(top[i].logprob, lsm[static_cast<size_t>(want[i])]);
  }
  const std::vector<TokenPick> all = TopTokens(row, 20);
  ASSERT_EQ(all.size(), row.size());
  EXPECT_EQ(all[4].token, 5);
  EXPECT_EQ(all[5].token, 1);  // NaN and -inf rank last, the lower id first
  EXPECT_EQ(all[6].token, 4);
  EXPECT_TRUE(TopTokens(row, 0).empty());
  const std::vector<float> big = RandomLogits(32000, 4.0f, 11);
  std::vector<int32_t> order(big.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return big[a] > big[b]; });
  const std::vector<TokenPick> top20 = TopTokens(big, 20);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(top20[i].token, order[i]) << i;
}

// ScoreRow: a target's LogSoftmax value and vLLM's rank (ids whose logit is at least the target's,
// NaN as -inf: tied ids share the larger rank), by hand on a small row and against a count over a
// large one; the top alternatives are TopTokens'; no target: logprob and rank 0.
TEST(SamplerPick, ScoreRowIsTheTargetsLogSoftmaxRankAndTheTopTokens) {
  const std::vector<float> row = {1.0f, kNaN, 3.0f, 3.0f, -kInf, 0.5f, 2.0f};
  std::vector<float> lsm(row.size());
  LogSoftmax(row, lsm);
  const uint32_t want_rank[7] = {4, 7, 2, 2, 7, 5, 3};
  for (int32_t t = 0; t < 7; ++t) {
    const RowScore s = ScoreRow(row, t, 2);
    EXPECT_EQ(s.logprob, lsm[static_cast<size_t>(t)]) << t;
    EXPECT_EQ(s.rank, want_rank[t]) << t;
    ASSERT_EQ(s.top.size(), 2u);
    EXPECT_EQ(s.top[0].token, 2);
    EXPECT_EQ(s.top[1].token, 3);
  }
  const RowScore none = ScoreRow(row, -1, 0);
  EXPECT_EQ(none.logprob, 0.f);
  EXPECT_EQ(none.rank, 0u);
  EXPECT_TRUE(none.top.empty());
  const std::vector<float> big = RandomLogits(32000, 4.0f, 12);
  std::vector<float> big_lsm(big.size());
  LogSoftmax(big, big_lsm);  // (checked against a double reference below)
  for (int32_t t : {0, 17, 31999, 12345}) {
    const RowScore s = ScoreRow(big, t, 5);
    EXPECT_EQ(s.logprob, big_lsm[static_cast<size_t>(t)]);
    EXPECT_EQ(s.rank, static_cast<uint32_t>(std::count_if(big.begin(), big.end(), [&](float x) { return x >= big[t]; })));
    const std::vector<TokenPick> top = TopTokens(big, 5);
    ASSERT_EQ(s.top.size(), top.size());
    for (size_t i = 0; i < top.size(); ++i) EXPECT_EQ(s.top[i].token, top[i].token);
  }
}

// TokenMask: the bits of ids past its size stay clear; KeepFirst intersects and bans the tail;
// MaskLogits sets exactly the banned ids to -inf.
TEST(TokenMaskTest, BitsAndMaskLogits) {
  TokenMask m(70);
  EXPECT_EQ(m.words().size(), 2u);
  EXPECT_EQ(m.words()[1], (uint64_t{1} << 6) - 1);
  EXPECT_TRUE(m.allowed(69));
  EXPECT_FALSE(m.allowed(70));
  EXPECT_FALSE(m.allowed(-1));
  m.Ban(3);
  m.Ban(64);
  m.Allow(100);  // outside: ignored
  EXPECT_FALSE(m.allowed(3));
  EXPECT_FALSE(m.allowed(64));
  std::vector<uint64_t> other = {~uint64_t{0} ^ 1u, ~uint64_t{0}};  // bans id 0
  m.KeepFirst(other, 66);                                         // and every id from 66 on
  for (int64_t i = 0; i < 70; ++i) EXPECT_EQ(m.allowed(i), i != 0 && i != 3 && i != 64 && i < 66) << i;
  std::vector<float> logits(70, 1.0f);
  MaskLogits(m.words(), logits);
  for (int64_t i = 0; i < 70; ++i) EXPECT_EQ(logits[static_cast<size_t>(i)] == -kInf, !m.allowed(i)) << i;
  EXPECT_TRUE(m.any());
  m.BanAll();
  EXPECT_FALSE(m.any());
  EXPECT_EQ(TokenMask::WordsFor(64), 1);
  EXPECT_EQ(TokenMask::WordsFor(65), 2);
}

TEST(SamplerSample, AllNegativeInfinityReturnsIndexZero) {
  const std::vector<float> dead = {-kInf, kNaN, -kInf};
  for (uint64_t step = 0; step < 10; ++step) {
    EXPECT_EQ(SampleToken(dead, Params(1.0f), step), 0);
    EXPECT_EQ(SampleToken(dead, Params(0.8f, 2, 0.5f), step), 0);
  }
}

TEST(SamplerSample, NeverPicksNaNOrNegativeInfinity) {
  const std::vector<float> logits = {kNaN, 0.0f, -kInf, 0.5f, kNaN};
  for (uint64_t step = 0; step < 2000; ++step) {
    const int32_t t = SampleToken(logits, Params(1.0f), step);
    EXPECT_TRUE(t == 1 || t == 3) << "step " << step << " token " << t;
  }
}

TEST(SamplerSample, PositiveInfinityTakesAllMass) {
  const std::vector<float> logits = {0.0f, kInf, 5.0f, kInf};
  std::set<int32_t> seen;
  for (uint64_t step = 0; step < 500; ++step) seen.insert(SampleToken(logits, Params(1.0f), step));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
}

// --- Randomness -------------------------------------------------------------------------------

TEST(SamplerRandom, UniformDrawIsPureAndInRange) {
  double sum = 0;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) {
    const double u = UniformDraw(42, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    EXPECT_EQ(u, UniformDraw(42, i));
    sum += u;
  }
  EXPECT_NEAR(sum / kDraws, 0.5, 0.02);
  // Rough uniformity: each tenth of [0, 1) holds about a tenth of the draws.
  std::vector<int> bins(10, 0);
  for (int i = 0; i < kDraws; ++i) ++bins[static_cast<int>(UniformDraw(7, i) * 10)];
  for (int b : bins) EXPECT_NEAR(b / double(kDraws), 0.1, 0.01);
  EXPECT_NE(UniformDraw(0, 0), UniformDraw(1, 0));
  EXPECT_NE(UniformDraw(0, 0), UniformDraw(0, 1));
}

TEST(SamplerRandom, SameSeedAndStepGiveSameToken) {
  const std::vector<float> logits = RandomLogits(32000, 2.0f, 3);
  const SamplingParams p = Params(0.9f, 0, 0.95f, 99);
  for (uint64_t step = 0; step < 50; ++step) {
    // Interleaving other requests' calls must not matter: no hidden generator state.
    const int32_t first = SampleToken(logits, p, step);
    SampleToken(logits, Params(1.0f, 0, 1.0f, 5), step + 1000);
    EXPECT_EQ(SampleToken(logits, p, step), first);
  }
}

TEST(SamplerRandom, DifferentSeedsGiveDifferentSequences) {
  const std::vector<float> logits = RandomLogits(1000, 1.0f, 11);
  std::vector<int32_t> a, b;
  for (uint64_t step = 0; step < 200; ++step) {
    a.push_back(SampleToken(logits, Params(1.0f, 0, 1.0f, 1), step));
    b.push_back(SampleToken(logits, Params(1.0f, 0, 1.0f, 2), step));
  }
  EXPECT_NE(a, b);
  int same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, 40);  // a flat-ish 1000-token distribution rarely repeats a token
}

// --- Distributions ----------------------------------------------------------------------------

constexpr int kSteps = 20000;
constexpr double kTol = 0.015;

TEST(SamplerDistribution, TemperatureMatchesSoftmax) {
  const std::vector<double> want = Softmax(kSix, 0.7);
  const std::vector<double> got = Frequencies(kSix, Params(0.7f), kSteps);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], kTol) << "token " << i;
}

TEST(SamplerDistribution, TopKKeepsBestTwoRenormalised) {
  const std::vector<double> probs = Softmax(kSix);
  const double z = probs[1] + probs[3];  // 2.5 and 2.0 are the two best logits
  const std::vector<double> got = Frequencies(kSix, Params(1.0f, 2), kSteps);
  for (size_t i = 0; i < got.size(); ++i) {
    const double want = (i == 1 || i == 3) ? probs[i] / z : 0.0;
    if (want == 0.0) {
      EXPECT_EQ(got[i], 0.0) << "token " << i;
    } else {
      EXPECT_NEAR(got[i], want, kTol) << "token " << i;
    }
  }
}

TEST(SamplerDistribution, TopKTiesKeepLowerIndex) {
  // Four tokens tie for the second place; top_k = 3 keeps ids 0, 1 and 2.
  const std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f, 2.0f};
  std::set<int32_t> seen;
  for (uint64_t step = 0; step < 2000; ++step) seen.insert(SampleToken(logits, Params(1.0f, 3), step));
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1, 4}));
}

TEST(SamplerDistribution, TopPKeepsExactlyTheNucleus) {
  const std::vector<double> probs = Softmax(kSix);
  const std::set<int32_t> nucleus = Nucleus(probs, 0.6);
  ASSERT_GE(nucleus.size(), 2u);
  ASSERT_LT(nucleus.size(), kSix.size());
  double z = 0;
  for (int32_t id : nucleus) z += probs[id];
  const std::vector<double> got = Frequencies(kSix, Params(1.0f, 0, 0.6f), kSteps);
  for (size_t i = 0; i < got.size(); ++i) {
    if (nucleus.count(i)) {
      EXPECT_NEAR(got[i], probs[i] / z, kTol) << "token " << i;
    } else {
      EXPECT_EQ(got[i], 0.0) << "token " << i;
    }
  }
}

TEST(SamplerDistribution, TinyTopPIsGreedy) {
  const std::vector<float> big = RandomLogits(32000, 3.0f, 21);
  const int32_t best = std::max_element(big.begin(), big.end()) - big.begin();
  for (uint64_t step = 0; step < 20; ++step) {
    EXPECT_EQ(SampleToken(big, Params(1.0f, 0, 1e-6f), step), best);
    EXPECT_EQ(SampleToken(big, Params(1.0f, 1), step), best);
  }
}

TEST(SamplerDistribution, TemperatureTopKTopPCombined) {
  // Temperature first, then top-k, then the nucleus of the renormalised top-k.
  const double t = 1.3;
  std::vector<double> probs = Softmax(kSix, t);
  std::vector<int32_t> order = ByProbability(probs);
  std::vector<double> topk(kSix.size(), 0.0);
  double zk = 0;
  for (int i = 0; i < 4; ++i) zk += probs[order[i]];
  for (int i = 0; i < 4; ++i) topk[order[i]] = probs[order[i]] / zk;
  const std::set<int32_t> nucleus = Nucleus(topk, 0.7);
  ASSERT_GE(nucleus.size(), 2u);
  ASSERT_LT(nucleus.size(), 4u);
  double z = 0;
  for (int32_t id : nucleus) z += topk[id];
  const std::vector<double> got = Frequencies(kSix, Params(1.3f, 4, 0.7f), kSteps);
  for (size_t i = 0; i < got.size(); ++i) {
    if (nucleus.count(i)) {
      EXPECT_NEAR(got[i], topk[i] / z, kTol) << "token " << i;
    } else {
      EXPECT_EQ(got[i], 0.0) << "token " << i;
    }
  }
}

TEST(SamplerDistribution, MinPKeepsTokensWithinItsFactorOfTheTopRenormalised) {
  // kSix at temperature 1: probabilities relative to the top (2.5) are e^(l - 2.5); min_p 0.5
  // keeps 2.5 and 2.0 (e^-0.5 = 0.61) but not 1.7 (e^-0.8 = 0.45): tokens {1, 3}.
  const std::vector<double> probs = Softmax(kSix);
  std::set<int32_t> kept;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] >= 0.5 * probs[1]) kept.insert(static_cast<int32_t>(i));
  }
  ASSERT_EQ(kept, (std::set<int32_t>{1, 3}));
  const double z = probs[1] + probs[3];
  const std::vector<double> got = Frequencies(kSix, WithMinP(Params(1.0f), 0.5f), kSteps);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], kept.count(static_cast<int32_t>(i)) ? probs[i] / z : 0.0, kTol) << "token " << i;
  }
}

TEST(SamplerDistribution, LargeVocabMatchesSoftmax) {
  // Enough candidates that the selection path (not just the final small sort) is exercised.
  const std::vector<float> logits = RandomLogits(2000, 2.5f, 5);
  const std::vector<double> want = Softmax(logits, 0.8);
  const std::vector<double> got = Frequencies(logits, Params(0.8f, 0, 1.0f, 77), kSteps);
  double total_variation = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], kTol) << "token " << i;
    total_variation += std::abs(got[i] - want[i]) / 2;
  }
  EXPECT_LT(total_variation, 0.1);
}

TEST(SamplerDistribution, LargeVocabTopPStaysInNucleus) {
  const std::vector<float> logits = RandomLogits(32000, 3.0f, 9);
  const std::set<int32_t> nucleus = Nucleus(Softmax(logits), 0.9);
  ASSERT_GT(nucleus.size(), 100u);
  for (uint64_t step = 0; step < 500; ++step) {
    const int32_t t = SampleToken(logits, Params(1.0f, 0, 0.9f), step);
    ASSERT_TRUE(nucleus.count(t)) << "step " << step << " token " << t;
  }
}

// The pick is the inverse CDF over the kept tokens in probability order: the fast path must give
// the very token the full-sort reference does, for every step.
TEST(SamplerDistribution, MatchesReferenceTokenForToken) {
  const std::vector<float> logits = RandomLogits(5000, 2.0f, 13);
  const SamplingParams cases[] = {
      Params(1.0f), Params(0.6f, 0, 0.9f, 3), Params(1.5f, 50, 1.0f, 4),
      Params(0.9f, 400, 0.8f, 5), Params(1.0f, 5000, 0.5f, 6), Params(2.0f, 7, 0.3f, 7),
      WithMinP(Params(1.0f, 0, 1.0f, 8), 0.05f), WithMinP(Params(0.7f, 100, 0.95f, 9), 0.2f),
      WithMinP(Params(1.2f, 0, 1.0f, 10), 1.0f)};
  for (const SamplingParams& p : cases) {
    const ReferenceKept kept = ReferenceNucleus(logits, p);
    int mismatches = 0;
    for (uint64_t step = 0; step < 1000; ++step) {
      mismatches += SampleToken(logits, p, step) != ReferencePick(kept, UniformDraw(p.seed, step));
    }
    // Summation order differs, so a draw within rounding of a boundary could flip; that is
    // ~1e-12 likely per step, so any mismatch here is a real ordering bug.
    EXPECT_EQ(mismatches, 0) << "T=" << p.temperature << " k=" << p.top_k << " p=" << p.top_p << " min_p=" << p.min_p;
  }
}

// --- LogSoftmax -------------------------------------------------------------------------------

// The double reference log(softmax) = x - (m + log(sum exp(x - m))).
std::vector<double> ReferenceLogSoftmax(const std::vector<float>& logits) {
  const double m = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(l - m);
  const double lse = m + std::log(sum);
  std::vector<double> out;
  for (float l : logits) out.push_back(l - lse);
  return out;
}

TEST(SamplerLogSoftmax, MatchesDoubleReference) {
  const std::vector<float> logits = RandomLogits(32000, 4.0f, 17);
  std::vector<float> out(logits.size());
  LogSoftmax(logits, out);
  const std::vector<double> want = ReferenceLogSoftmax(logits);
  double exp_sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    // The output is float: below -8 its spacing exceeds 1e-6, so the bound is relative there.
    ASSERT_NEAR(out[i], want[i], 1e-6 * std::max(1.0, std::abs(want[i]))) << "token " << i;
    exp_sum += std::exp(static_cast<double>(out[i]));
  }
  EXPECT_NEAR(exp_sum, 1.0, 1e-5);
}

TEST(SamplerLogSoftmax, SmallRowWithinAbsoluteBound) {
  std::vector<float> out(kSix.size());
  LogSoftmax(kSix, out);
  const std::vector<double> want = ReferenceLogSoftmax(kSix);
  double exp_sum = 0;
  for (size_t i = 0; i < kSix.size(); ++i) {
    EXPECT_NEAR(out[i], want[i], 1e-6) << "token " << i;
    exp_sum += std::exp(static_cast<double>(out[i]));
  }
  EXPECT_NEAR(exp_sum, 1.0, 1e-6);
}

TEST(SamplerLogSoftmax, LargeLogitsDoNotOverflow) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, kNaN};
  std::vector<float> out(logits.size());
  LogSoftmax(logits, out);
  const double lse = 1000.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2000.0));
  EXPECT_NEAR(out[0], 1000.0 - lse, 1e-6);
  EXPECT_NEAR(out[1], 999.0 - lse, 1e-6);
  EXPECT_NEAR(out[2], -1000.0 - lse, 1e-3);
  EXPECT_EQ(out[3], -kInf);
  EXPECT_NEAR(std::exp(double(out[0])) + std::exp(double(out[1])), 1.0, 1e-6);
}

TEST(SamplerLogSoftmax, UsedAsScoreAgreesWithSamplingFrequencies) {
  std::vector<float> out(kSix.size());
  LogSoftmax(kSix, out);
  const std::vector<double> got = Frequencies(kSix, Params(1.0f, 0, 1.0f, 31), kSteps);
  for (size_t i = 0; i < kSix.size(); ++i) EXPECT_NEAR(got[i], std::exp(out[i]), kTol);
}

// --- Validate ---------------------------------------------------------------------------------

void ExpectInvalid(const SamplingParams& p, const std::string& field) {
  const absl::Status s = p.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field << ": " << s;
  EXPECT_NE(std::string(s.message()).find(field), std::string::npos) << s;
}

TEST(SamplerValidate, AcceptsDefaultsAndEdges) {
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
  EXPECT_TRUE(Params(0.0f, 0, 1.0f).Validate().ok());
  EXPECT_TRUE(Params(5.0f, 32000, 1e-6f).Validate().ok());
}

TEST(SamplerValidate, RejectsEachBadField) {
  ExpectInvalid(Params(-0.1f), "temperature");
  ExpectInvalid(Params(kInf), "temperature");
  ExpectInvalid(Params(kNaN), "temperature");
  ExpectInvalid(Params(1.0f, -1), "top_k");
  ExpectInvalid(Params(1.0f, 0, 0.0f), "top_p");
  ExpectInvalid(Params(1.0f, 0, -0.5f), "top_p");
  ExpectInvalid(Params(1.0f, 0, 1.01f), "top_p");
  ExpectInvalid(Params(1.0f, 0, kNaN), "top_p");
  ExpectInvalid(WithMinP(Params(1.0f), -0.1f), "min_p");
  ExpectInvalid(WithMinP(Params(1.0f), 1.5f), "min_p");
  ExpectInvalid(WithMinP(Params(1.0f), kNaN), "min_p");
}

}  // namespace
}  // namespace moe
