// Token sampling from a row of logits: greedy, temperature, top-k and top-p (nucleus), driven by
// counter-based randomness so a request's tokens depend only on its seed and step, never on the
// batch it shares, the thread that runs it or the number of ranks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/logit_adjustment.h"
#include "common/status.h"
#include "common/uniform_draw.h"  // UniformDraw: the draw of a step, shared with the GPU kernel

namespace moe {

struct SamplingParams {
  float temperature = 1.0f;  // 0 => greedy (argmax)
  int32_t top_k = 0;         // 0 => no top-k limit
  float top_p = 1.0f;        // nucleus, in (0, 1]
  float min_p = 0.0f;        // in [0, 1]: after top_p, drop tokens below min_p x the top probability
  uint64_t seed = 0;

  bool greedy() const { return temperature == 0.0f; }

  // InvalidArgument "<field>: <what>" for the first bad field: temperature < 0 or not finite,
  // top_k < 0, top_p not in (0, 1], min_p not in [0, 1]. Checked where a request enters (the
  // coordinator prefixes the request's field path); SampleToken assumes valid params.
  absl::Status Validate() const;
};

// Samples one token id from `logits` (size = vocab, must be non-empty).
// Greedy: argmax, the first index winning ties (as torch.argmax).
// Otherwise, in the order Hugging Face applies them: divide by temperature; keep the top_k
// largest (ties to the lower index); softmax in double; keep the smallest prefix of the kept
// tokens, sorted by probability descending (ties to the lower index), whose cumulative
// probability reaches top_p (at least one token); drop the tokens whose probability is below
// min_p times the largest (Hugging Face's MinPLogitsWarper); renormalise; and pick by inverse CDF with
// u = UniformDraw(seed, step), walking the kept tokens in that sorted order.
// NaN logits count as -inf; when every logit is -inf the result is the argmax rule's index 0.
// Expected O(vocab): selection instead of sorting, even for top-p.
int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t step);

// The token SampleToken picks and its log-probability (LogSoftmax's value there, of the raw
// logits: what a client sees as the token's logprob whatever the sampling parameters), without the
// whole log-softmax row: what an engine returns for a chunk that wants only its next token
// (SequenceChunk::sample_next); the GPU's sampling kernel computes the same. With `adjust` (entries
// with ids in the row, one per id) and `allowed` (bits, TokenMask's words, at least logits.size()
// of them) the pick is SampleToken's over the row with each entry's id Adjusted and every id
// `allowed` bans at -inf; the logprob stays the raw row's.
struct TokenPick {
  int32_t token = 0;
  float logprob = 0.f;
};
TokenPick PickToken(std::span<const float> logits, const SamplingParams& p, uint64_t step,
                    std::span<const uint64_t> allowed = {}, std::span<const LogitAdjustment> adjust = {});

// The top alternatives a client may ask for beside each token: the n tokens with the largest raw
// logits (NaN as -inf; ties to the lower id; all of them when the row is shorter), in that order,
// each with its LogSoftmax value. The GPU's sampling kernel computes the same (SampleRowParams::top_n).
std::vector<TokenPick> TopTokens(std::span<const float> logits, uint32_t n);

// What a scored row reports (ScoreRow): the log-probability of the token that follows it and vLLM's
// rank of that token (how many ids have a logit at least its, NaN as -inf: 1 is the most probable),
// both 0 without one, and the row's top alternatives (TopTokens).
struct RowScore {
  float logprob = 0.f;
  uint32_t rank = 0;
  std::vector<TokenPick> top;
};
// `target` < 0: no target. The GPU's sampling kernel computes the same (SampleRowParams::target).
RowScore ScoreRow(std::span<const float> logits, int32_t target, uint32_t top);

// Natural-log softmax of `logits` into `out` (same size), computed in double. NaN logits count
// as -inf, like SampleToken; +inf logits share the whole mass; an all -inf row comes out uniform.
void LogSoftmax(std::span<const float> logits, std::span<float> out);

}  // namespace moe
