// What every engine (the CPU Engine, the GPU GpuEngine) offers the generation loop and the serving
// side: sequences with a KV cache, and one collective forward step over any mix of them. Also the
// parts of a step both engines share: the input validation and the step header.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"
#include "coordinator/placement.h"
#include "worker/comm/communicator.h"
#include "worker/kv_blocks.h"
#include "worker/model/config.h"
#include "worker/moe/load_stats.h"
#include "worker/sampler.h"

namespace moe {

// The next token of a sequence, sampled by the engine: SampleToken's rule with these parameters at
// this step (the request's tokens generated so far).
struct SampleNext {
  SamplingParams params;
  uint64_t step = 0;
  // Empty: any id may be drawn. Else the ids that may (TokenMask's words over the model's
  // vocabulary): the pick is PickToken's with them, the logprob the raw row's.
  std::vector<uint64_t> allowed = {};
  // Penalties: the logits changed before the pick (PickToken's `adjust`; ids in the vocabulary,
  // each at most once).
  std::vector<LogitAdjustment> adjust = {};
  // Also return the row's top_logprobs most probable tokens (TopTokens; at most kMaxTopLogprobs).
  uint32_t top_logprobs = 0;
};
inline constexpr uint32_t kMaxTopLogprobs = 20;

// Scores of a chunk's rows instead of the rows (a chunk with all_logits): row r's target (the token
// that follows it; -1: none) gets its log-probability and rank, and the row its `top` most probable
// tokens (ScoreRow), so a GPU engine copies a few numbers per row to the host, not the vocabulary.
struct ScoreTargets {
  std::vector<int32_t> targets;  // one per token of the chunk, in the vocabulary or -1
  uint32_t top = 0;              // at most kMaxTopLogprobs
};
// The targets of a chunk of tokens[first, first + n): each position's next token, tokens[q + 1],
// and -1 for the last position of `tokens` (nothing follows it).
ScoreTargets NextTokenTargets(std::span<const int32_t> tokens, int64_t first, int64_t n, uint32_t top);

// Tokens appended to a sequence: they take positions length .. length + tokens.size() - 1.
struct SequenceChunk {
  int64_t seq_id = 0;
  std::vector<int32_t> tokens;
  bool all_logits = false;  // logits for every token (scoring), else only the last one
  // With all_logits: each row's scores (ChunkLogits::scores) instead of its logits.
  std::optional<ScoreTargets> score = std::nullopt;
  // Only the next token is wanted (not with all_logits): the engine samples it from the last
  // position's logits and returns it with its log-probability (PickToken) instead of the logits,
  // so a GPU engine copies two numbers to the host instead of a vocabulary-wide row.
  std::optional<SampleNext> sample_next = std::nullopt;
};

struct ChunkLogits {
  int64_t seq_id = 0;
  int64_t first_position = 0;  // position of the first row of `logits` (sample_next: of the pick)
  int64_t rows = 0;            // sample_next: 0
  std::vector<float> logits;   // [rows, vocab]
  int32_t token = -1;          // sample_next: the sampled next token
  float token_logprob = 0.f;   // sample_next: its log-probability
  std::vector<TokenPick> top;  // sample_next with top_logprobs: TopTokens of the row
  std::vector<RowScore> scores;  // score: one per row (`logits` then empty)
};

struct StepOutput {
  std::vector<ChunkLogits> chunks;  // in the order of the input chunks
  int64_t global_rows = 0;          // tokens over all ranks in this step; 0: every rank was idle
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual absl::Status AddSequence(int64_t seq_id) = 0;
  virtual void FreeSequence(int64_t seq_id) = 0;
  virtual bool HasSequence(int64_t seq_id) const = 0;
  virtual int64_t SequenceLength(int64_t seq_id) const = 0;

  // Prefix caching (KvBlockAllocator): enable before adding sequences; then a new sequence may
  // start from the cached blocks of its prompt's first whole blocks, and only the rest of the prompt
  // is stepped (from the returned position on).
  virtual void EnablePrefixCache() = 0;
  // `root`: KvBlockAllocator::AttachCachedPrefix's (0, or the sequence's cache_salt's).
  virtual int64_t AttachCachedPrefix(int64_t seq_id, std::span<const int32_t> prompt, uint64_t root) = 0;

  // The collective forward step: every rank calls it in lock step, each with its own sequences
  // (possibly none). On error nothing is changed on any rank.
  virtual absl::StatusOr<StepOutput> Step(const std::vector<SequenceChunk>& chunks) = 0;

  // What the serving side reports and plans with.
  virtual Communicator& comm() = 0;
  virtual const KvBlockAllocator& kv_blocks() const = 0;
  // The prefix hashes of cached KV blocks reclaimed since the last call (KvBlockAllocator's).
  virtual std::vector<uint64_t> TakeEvictedPrefixHashes() = 0;
  virtual const LoadStats& load_stats() const = 0;
  virtual int64_t weight_bytes() const = 0;  // this rank's weights in memory (host or device)
};

// The checks every engine's Load makes before loading anything: the plan is for this model's layers
// and experts and for comm.size() ranks, the KV block size is positive and the capacity not negative.
absl::Status CheckEngineSetup(const ModelConfig& c, const PlacementPlan& plan, const Communicator& comm,
                              int64_t kv_block_size, int64_t kv_tokens);

// Checks a step's chunks against the config and the KV cache without changing anything: every
// sequence known and at most once, tokens present and inside the vocabulary, sampling parameters
// valid, an allowed-ids mask (if any) of the vocabulary's size, adjusted ids inside the vocabulary
// and distinct, at most kMaxTopLogprobs top logprobs, scores only with all_logits and with one
// target in the vocabulary (or -1) per token, positions within
// the model's context (ModelConfig::context_length()), enough free KV blocks for the whole step.
absl::Status ValidateStepChunks(const ModelConfig& c, const KvBlockAllocator& kv,
                                const std::vector<SequenceChunk>& chunks);

// The step header, a collective: an all-reduce of (ranks that rejected their input, rows over all
// ranks). Returns the rows over all ranks (0: every rank is idle, the step ends at once), or
// `local` on the rank that rejected its input and ABORTED on the others.
absl::StatusOr<int64_t> StepHeader(Communicator& comm, const absl::Status& local, int64_t local_rows);

// The prologue of every engine's Step (a collective): validate the chunks, run the step header,
// and, when there is work anywhere, reserve the KV blocks of this rank's chunks. Returns the rows
// over all ranks; on error nothing has changed on any rank.
absl::StatusOr<int64_t> BeginStep(const ModelConfig& c, Communicator& comm, KvBlockAllocator& kv,
                                  const std::vector<SequenceChunk>& chunks);

// The rows of a chunk whose logits the step returns (the last token, or every token when
// all_logits), with seq_id, first_position and rows set; `start` is the chunk's first position.
ChunkLogits WantedRows(const SequenceChunk& ch, int64_t start);

// The epilogue: the chunks' tokens are now in the KV cache.
void AdvanceLengths(KvBlockAllocator& kv, const std::vector<SequenceChunk>& chunks);

}  // namespace moe
