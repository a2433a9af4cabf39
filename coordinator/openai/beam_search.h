// vLLM's beam search (`use_beam_search`), as its OpenAI server runs it: outside the engine, one
// token at a time. Each step asks for every live beam's next-token candidates (the model's 2 x width
// most probable tokens with their log-probabilities, and the one it would pick); every beam
// extended by each candidate is a new beam of cumulative log-probability + the candidate's; one
// extended by an end-of-sequence token is complete (unless ignore_eos) and leaves the search; the
// width best of the others, by BeamScore, go on. After max_tokens steps the complete ones and the
// live ones together are ranked by BeamScore and the width best are the answer.
//
// The server supplies the candidates (one Generate call of one token per beam, with top logprobs);
// the search itself is pure, so it is tested against an exhaustive search.
#pragma once

#include <cstdint>
#include <functional>
#include <variant>
#include <vector>

#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {

struct BeamCandidate {
  int32_t token_id = 0;
  double logprob = 0;
};

struct BeamSearchOptions {
  uint32_t beam_width = 1;
  uint32_t max_tokens = 16;
  double length_penalty = 1.0;
  bool ignore_eos = false;
  // An end-of-sequence token that completes a beam stays in its tokens (vLLM's
  // include_stop_str_in_output); otherwise the beam ends before it (its log-probability counted).
  bool include_stop = false;
  std::vector<int32_t> eos_ids;
};

struct Beam {
  std::vector<int32_t> tokens;  // the prompt's, then the generated ones
  double cum_logprob = 0;
  bool ended_by_eos = false;    // finish reason "stop"; otherwise "length"
};

// vLLM's get_beam_search_score: cum_logprob / len^length_penalty, len counting the prompt's tokens
// and not a last end-of-sequence token.
double BeamScore(const Beam& beam, const std::vector<int32_t>& eos_ids, double length_penalty);

// For each of `prefixes` (a beam's tokens so far), its next-token candidates; or the error that
// ends the search.
using NextCandidates =
    std::function<std::variant<std::vector<std::vector<BeamCandidate>>, HttpError>(const std::vector<std::vector<int32_t>>& prefixes)>;

// The best `beam_width` beams after `prompt`, best first.
std::variant<std::vector<Beam>, HttpError> BeamSearch(const std::vector<int32_t>& prompt, const BeamSearchOptions& options,
                                                      const NextCandidates& next);

}  // namespace moe::openai
