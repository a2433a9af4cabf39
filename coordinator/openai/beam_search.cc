#include "coordinator/openai/beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace moe::openai {
namespace {

bool IsEos(int32_t id, const std::vector<int32_t>& eos_ids) {
  return std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end();
}

// Best first; equal scores keep their order (Python's stable sort, as vLLM's).
void SortByScore(std::vector<Beam>& beams, const BeamSearchOptions& o) {
  std::vector<std::pair<double, size_t>> keys;
  keys.reserve(beams.size());
  for (size_t i = 0; i < beams.size(); ++i) {
    const double score = BeamScore(beams[i], o.eos_ids, o.length_penalty);
    // An extreme length_penalty can make 0 / 0: such a beam ranks last, and the order stays strict.
    keys.emplace_back(std::isnan(score) ? -std::numeric_limits<double>::infinity() : score, i);
  }
  std::stable_sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<Beam> sorted;
  sorted.reserve(beams.size());
  for (const auto& [score, i] : keys) sorted.push_back(std::move(beams[i]));
  beams = std::move(sorted);
}

}  // namespace

double BeamScore(const Beam& beam, const std::vector<int32_t>& eos_ids, double length_penalty) {
  size_t len = beam.tokens.size();
  if (len > 0 && IsEos(beam.tokens.back(), eos_ids)) --len;
  return beam.cum_logprob / std::pow(static_cast<double>(len), length_penalty);
}

std::variant<std::vector<Beam>, HttpError> BeamSearch(const std::vector<int32_t>& prompt, const BeamSearchOptions& o,
                                                      const NextCandidates& next) {
  std::vector<Beam> live{Beam{prompt, 0, false}};
  std::vector<Beam> complete;
  for (uint32_t step = 0; step < o.max_tokens && !live.empty(); ++step) {
    std::vector<std::vector<int32_t>> prefixes;
    prefixes.reserve(live.size());
    for (const Beam& b : live) prefixes.push_back(b.tokens);
    auto got = next(prefixes);
    if (HttpError* e = std::get_if<HttpError>(&got)) return *e;
    const std::vector<std::vector<BeamCandidate>>& candidates = std::get<std::vector<std::vector<BeamCandidate>>>(got);
    if (candidates.size() != live.size()) {
      return HttpError{500, "beam search: " + std::to_string(candidates.size()) + " candidate lists for " +
                                std::to_string(live.size()) + " beams", "server_error", {}};
    }
    std::vector<Beam> extended;
    for (size_t i = 0; i < live.size(); ++i) {
      for (const BeamCandidate& c : candidates[i]) {
        Beam b{live[i].tokens, live[i].cum_logprob + c.logprob, false};
        if (!o.ignore_eos && IsEos(c.token_id, o.eos_ids)) {
          if (o.include_stop) b.tokens.push_back(c.token_id);
          b.ended_by_eos = true;
          complete.push_back(std::move(b));
        } else {
          b.tokens.push_back(c.token_id);
          extended.push_back(std::move(b));
        }
      }
    }
    SortByScore(extended, o);
    if (extended.size() > o.beam_width) extended.resize(o.beam_width);
    live = std::move(extended);
  }
  for (Beam& b : live) complete.push_back(std::move(b));
  SortByScore(complete, o);
  if (complete.size() > o.beam_width) complete.resize(o.beam_width);
  return complete;
}

}  // namespace moe::openai
