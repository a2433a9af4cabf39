#include "worker/generation.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {
namespace {

// Sequence ids local to one call; engines of different ranks keep separate KV caches.
constexpr int64_t kFirstSeqId = 1;

void FreeAll(StepEngine& engine, size_t n) {
  for (size_t i = 0; i < n; ++i) engine.FreeSequence(kFirstSeqId + static_cast<int64_t>(i));
}

}  // namespace

const char* FinishReasonName(FinishReason r) { return r == FinishReason::kStop ? "stop" : "length"; }

bool EndsGeneration(const ModelConfig& c, const GenerateRequest& req, int32_t token) {
  return !req.ignore_eos &&
         (c.is_eos(token) || std::ranges::find(req.stop_token_ids, token) != req.stop_token_ids.end());
}

absl::StatusOr<std::vector<GenerateResult>> GenerateAll(StepEngine& engine, const std::vector<GenerateRequest>& requests,
                                                        const std::function<void(size_t, int32_t)>& on_token) {
  const ModelConfig& c = engine.config();
  const size_t n = requests.size();
  std::vector<GenerateResult> results(n);
  std::vector<char> active(n, 0);
  absl::Status local;
  for (size_t i = 0; i < n && local.ok(); ++i) {
    local = requests[i].sampling.Validate();
    if (local.ok()) local = engine.AddSequence(kFirstSeqId + static_cast<int64_t>(i));
    active[i] = requests[i].max_tokens > 0;
  }
  // Requests whose sampling parameters are bad must not leave other ranks waiting: a rank with a
  // local error submits one invalid chunk, so the step header fails the step on every rank.
  while (true) {
    std::vector<SequenceChunk> chunks;
    std::vector<size_t> owner;
    if (!local.ok()) {
      chunks.push_back({-1, {}, false});
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (!active[i]) continue;
        const int64_t id = kFirstSeqId + static_cast<int64_t>(i);
        SequenceChunk ch{id, {}, false};
        // The engine samples: no logits to the host.
        ch.sample_next = SampleNext{requests[i].sampling, static_cast<uint64_t>(results[i].tokens.size())};
        if (engine.SequenceLength(id) == 0) {
          ch.tokens = requests[i].prompt;
        } else {
          ch.tokens = {results[i].tokens.back()};
        }
        chunks.push_back(std::move(ch));
        owner.push_back(i);
      }
    }
    absl::StatusOr<StepOutput> step = engine.Step(chunks);
    if (!step.ok()) {
      FreeAll(engine, n);
      return local.ok() ? step.status() : local;
    }
    if (step->global_rows == 0) break;
    for (size_t j = 0; j < owner.size(); ++j) {
      const size_t i = owner[j];
      const GenerateRequest& req = requests[i];
      GenerateResult& res = results[i];
      const ChunkLogits& cl = step->chunks[j];
      const int32_t tok = cl.token;
      res.tokens.push_back(tok);
      if (on_token) on_token(i, tok);
      const int64_t id = kFirstSeqId + static_cast<int64_t>(i);
      const bool at_context_end = engine.SequenceLength(id) + 1 > c.context_length();
      if (EndsGeneration(c, req, tok)) {
        res.finish = FinishReason::kStop;
      } else if (static_cast<int64_t>(res.tokens.size()) < req.max_tokens && !at_context_end) {
        continue;
      }
      active[i] = 0;
      engine.FreeSequence(id);
    }
  }
  FreeAll(engine, n);
  return results;
}

absl::StatusOr<std::vector<ScoreResult>> ScoreAll(StepEngine& engine, const std::vector<std::vector<int32_t>>& sequences) {
  const size_t n = sequences.size();
  std::vector<SequenceChunk> chunks;
  absl::Status local;
  for (size_t i = 0; i < n && local.ok(); ++i) {
    const int64_t id = kFirstSeqId + static_cast<int64_t>(i);
    local = engine.AddSequence(id);
    SequenceChunk& ch = chunks.emplace_back(SequenceChunk{id, sequences[i], true});
    // Each row's next token, scored on the engine.
    ch.score = NextTokenTargets(sequences[i], 0, static_cast<int64_t>(sequences[i].size()), 0);
  }
  if (!local.ok()) chunks = {{-1, {}, true}};  // fails the step on every rank (see GenerateAll)
  absl::StatusOr<StepOutput> step = engine.Step(chunks);
  FreeAll(engine, n);
  if (!local.ok()) return local;
  if (!step.ok()) return step.status();
  std::vector<ScoreResult> results(n);
  for (size_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& toks = sequences[i];
    const ChunkLogits& cl = step->chunks[i];
    results[i].logprobs.assign(toks.size(), std::numeric_limits<float>::quiet_NaN());
    for (size_t t = 1; t < toks.size(); ++t) results[i].logprobs[t] = cl.scores[t - 1].logprob;
  }
  return results;
}

}  // namespace moe
