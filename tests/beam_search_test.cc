// vLLM's beam search (coordinator/openai/beam_search.h) against what it must find without the
// server: on a toy model (a seeded next-token distribution per prefix, in float64) whose beams
// are never pruned, the answer is the exhaustive search's best beams by vLLM's score; one beam wide
// with end-of-sequence ignored, it is the greedy chain of most probable tokens.
#include "coordinator/openai/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

namespace moe::openai {
namespace {

// A model over `vocab` tokens: each prefix's next-token log-probabilities are a softmax of logits
// drawn from a hash of the prefix.
struct ToyModel {
  int32_t vocab;
  uint64_t seed;

  std::vector<double> LogProbs(const std::vector<int32_t>& prefix) const {
    uint64_t h = seed;
    for (int32_t t : prefix) h = Mix(h ^ static_cast<uint64_t>(t + 1));
    std::vector<double> logits(static_cast<size_t>(vocab));
    for (double& x : logits) {
      h = Mix(h);
      x = 4.0 * (static_cast<double>(h >> 11) / 9007199254740992.0);  // [0, 4)
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double x : logits) sum += std::exp(x - max);
    for (double& x : logits) x = x - max - std::log(sum);
    return logits;
  }
  // The `k` most probable next tokens, most probable first (what Generate's top logprobs give).
  std::vector<BeamCandidate> Top(const std::vector<int32_t>& prefix, size_t k) const {
    const std::vector<double> lp = LogProbs(prefix);
    std::vector<int32_t> ids(lp.size());
    std::iota(ids.begin(), ids.end(), 0);
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
    std::vector<BeamCandidate> out;
    for (size_t i = 0; i < std::min(k, ids.size()); ++i) out.push_back({ids[i], lp[static_cast<size_t>(ids[i])]});
    return out;
  }
  static uint64_t Mix(uint64_t z) {  // splitmix64's finaliser
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
};

NextCandidates FromModel(const ToyModel& m, size_t k, std::vector<size_t>* calls = nullptr) {
  return [&m, k, calls](const std::vector<std::vector<int32_t>>& prefixes)
             -> std::variant<std::vector<std::vector<BeamCandidate>>, HttpError> {
    if (calls != nullptr) calls->push_back(prefixes.size());
    std::vector<std::vector<BeamCandidate>> out;
    for (const auto& p : prefixes) out.push_back(m.Top(p, k));
    return out;
  };
}

std::vector<Beam> Search(const std::vector<int32_t>& prompt, const BeamSearchOptions& o, const NextCandidates& next) {
  auto got = BeamSearch(prompt, o, next);
  if (const HttpError* e = std::get_if<HttpError>(&got)) {
    ADD_FAILURE() << e->message;
    return {};
  }
  return std::get<std::vector<Beam>>(got);
}

// Every beam the search could end with, by enumeration: each sequence of up to max_tokens - 1
// tokens other than EOS followed by EOS (complete), and each of max_tokens such tokens.
void Enumerate(const ToyModel& m, int32_t eos, uint32_t max_tokens, bool include_stop, Beam beam, size_t depth,
               std::vector<Beam>& out) {
  const std::vector<double> lp = m.LogProbs(beam.tokens);
  if (depth == max_tokens) {
    out.push_back(beam);
    return;
  }
  Beam ended = beam;
  ended.cum_logprob += lp[static_cast<size_t>(eos)];
  ended.ended_by_eos = true;
  if (include_stop) ended.tokens.push_back(eos);
  out.push_back(ended);
  for (int32_t t = 0; t < m.vocab; ++t) {
    if (t == eos) continue;
    Beam next = beam;
    next.tokens.push_back(t);
    next.cum_logprob += lp[static_cast<size_t>(t)];
    if (depth + 1 == max_tokens) {
      out.push_back(next);
    } else {
      Enumerate(m, eos, max_tokens, include_stop, next, depth + 1, out);
    }
  }
}

TEST(BeamSearchTest, UnprunedItIsTheExhaustiveSearchsBest) {
  const ToyModel model{5, 7};
  const int32_t eos = 2;
  const std::vector<int32_t> prompt = {3, 1, 4};
  int compared = 0;
  for (double length_penalty : {0.0, 1.0, 2.0, -0.5}) {
    for (bool include_stop : {false, true}) {
      BeamSearchOptions o;
      o.beam_width = 64;  // at least the 4^3 beams of three tokens: none is ever dropped
      o.max_tokens = 3;
      o.length_penalty = length_penalty;
      o.include_stop = include_stop;
      o.eos_ids = {eos};
      const std::vector<Beam> got = Search(prompt, o, FromModel(model, 2 * o.beam_width));
      std::vector<Beam> all;
      Enumerate(model, eos, o.max_tokens, include_stop, Beam{prompt, 0, false}, 0, all);
      ASSERT_EQ(all.size(), 1u + 4 + 16 + 64 + 0u) << "ends after 0, 1 or 2 tokens, and 64 of three";
      const auto score = [&](const Beam& b) {
        size_t len = b.tokens.size() - (include_stop && b.ended_by_eos ? 1 : 0);
        return b.cum_logprob / std::pow(static_cast<double>(len), length_penalty);
      };
      std::stable_sort(all.begin(), all.end(), [&](const Beam& a, const Beam& b) { return score(a) > score(b); });
      ASSERT_EQ(got.size(), o.beam_width);
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].tokens, all[i].tokens) << "penalty " << length_penalty << " beam " << i;
        EXPECT_EQ(got[i].ended_by_eos, all[i].ended_by_eos);
        EXPECT_NEAR(got[i].cum_logprob, all[i].cum_logprob, 1e-12);
        EXPECT_NEAR(BeamScore(got[i], o.eos_ids, length_penalty), score(all[i]), 1e-12);
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 4 * 2 * 64);
}

TEST(BeamSearchTest, OneBeamIgnoringEosIsTheGreedyChain) {
  const ToyModel model{50, 11};
  BeamSearchOptions o;
  o.beam_width = 1;
  o.max_tokens = 12;
  o.ignore_eos = true;
  o.eos_ids = {0};
  std::vector<size_t> calls;
  const std::vector<Beam> got = Search({7}, o, FromModel(model, 2, &calls));
  ASSERT_EQ(got.size(), 1u);
  std::vector<int32_t> greedy = {7};
  double cum = 0;
  for (int i = 0; i < 12; ++i) {
    const std::vector<double> lp = model.LogProbs(greedy);
    const auto best = std::max_element(lp.begin(), lp.end());
    cum += *best;
    greedy.push_back(static_cast<int32_t>(best - lp.begin()));
  }
  EXPECT_EQ(got[0].tokens, greedy);
  EXPECT_NEAR(got[0].cum_logprob, cum, 1e-12);
  EXPECT_FALSE(got[0].ended_by_eos);
  EXPECT_EQ(calls, std::vector<size_t>(12, 1)) << "one beam a step";
}

// Pruned: at most `beam_width` beams go on each step, and the answer has that many, best first.
TEST(BeamSearchTest, EachStepKeepsTheWidthBestBeams) {
  const ToyModel model{40, 3};
  BeamSearchOptions o;
  o.beam_width = 3;
  o.max_tokens = 8;
  o.eos_ids = {5};
  std::vector<size_t> calls;
  const std::vector<Beam> got = Search({1, 2}, o, FromModel(model, 6, &calls));
  ASSERT_EQ(got.size(), 3u);
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.front(), 1u);
  for (size_t c : calls) EXPECT_LE(c, 3u);
  for (size_t i = 1; i < got.size(); ++i) {
    EXPECT_GE(BeamScore(got[i - 1], o.eos_ids, 1.0), BeamScore(got[i], o.eos_ids, 1.0));
  }
  // Every beam's log-probability is its tokens' under the model.
  for (const Beam& b : got) {
    double cum = 0;
    std::vector<int32_t> prefix = {1, 2};
    for (size_t i = 2; i < b.tokens.size(); ++i) {
      cum += model.LogProbs(prefix)[static_cast<size_t>(b.tokens[i])];
      prefix.push_back(b.tokens[i]);
    }
    if (b.ended_by_eos) cum += model.LogProbs(prefix)[5];
    EXPECT_NEAR(b.cum_logprob, cum, 1e-12);
  }
}

TEST(BeamSearchTest, AnErrorFromTheCandidatesEndsTheSearch) {
  BeamSearchOptions o;
  o.beam_width = 2;
  o.max_tokens = 4;
  int steps = 0;
  auto got = BeamSearch({1}, o, [&](const std::vector<std::vector<int32_t>>& prefixes)
                                    -> std::variant<std::vector<std::vector<BeamCandidate>>, HttpError> {
    if (++steps == 2) return HttpError{503, "the cluster is gone", "server_error", {}};
    return std::vector<std::vector<BeamCandidate>>(prefixes.size(), {{3, -0.1}, {4, -2.0}});
  });
  ASSERT_TRUE(std::holds_alternative<HttpError>(got));
  EXPECT_EQ(std::get<HttpError>(got).status, 503);
  EXPECT_EQ(steps, 2);
}

}  // namespace
}  // namespace moe::openai
