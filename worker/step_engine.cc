#include "worker/step_engine.h"

#include <algorithm>
#include <unordered_set>

#include "worker/token_mask.h"

namespace moe {

absl::Status CheckEngineSetup(const ModelConfig& c, const PlacementPlan& plan, const Communicator& comm,
                              int64_t kv_block_size, int64_t kv_tokens) {
  if (plan.num_layers() != c.num_layers || plan.num_experts() != c.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("placement plan is for ", plan.num_layers(), " layers x ",
                                                   plan.num_experts(), " experts, the model has ", c.num_layers,
                                                   " x ", c.num_experts));
  }
  if (plan.world_size() != comm.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement plan is for ", plan.world_size(), " ranks, the job has ", comm.size()));
  }
  if (kv_block_size <= 0 || kv_tokens < 0) {
    return absl::InvalidArgumentError("kv_block_size must be positive and kv_tokens non-negative");
  }
  return absl::OkStatus();
}

absl::Status ValidateStepChunks(const ModelConfig& c, const KvBlockAllocator& kv,
                                const std::vector<SequenceChunk>& chunks) {
  std::unordered_set<int64_t> seen;
  std::vector<uint64_t> adjusted;  // a chunk's adjusted ids, one bit each
  int64_t blocks_needed = 0;
  for (const SequenceChunk& ch : chunks) {
    if (!kv.HasSequence(ch.seq_id)) return absl::NotFoundError(absl::StrCat("sequence ", ch.seq_id, " not added"));
    if (!seen.insert(ch.seq_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, " appears twice in one step"));
    }
    if (ch.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": no tokens"));
    if (ch.sample_next) {
      if (ch.all_logits) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", ch.seq_id, ": sample_next and all_logits exclude each other"));
      }
      if (const absl::Status s = ch.sample_next->params.Validate(); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": ", s.message()));
      }
      const size_t allowed_words = ch.sample_next->allowed.size();
      if (allowed_words != 0 && allowed_words != static_cast<size_t>(TokenMask::WordsFor(c.vocab_size))) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": the allowed ids' mask has ",
                                                       allowed_words, " words, the vocabulary of ", c.vocab_size,
                                                       " ids needs ", TokenMask::WordsFor(c.vocab_size)));
      }
      if (ch.sample_next->top_logprobs > kMaxTopLogprobs) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": top_logprobs ",
                                                       ch.sample_next->top_logprobs, " above ", kMaxTopLogprobs));
      }
      if (!ch.sample_next->adjust.empty()) adjusted.assign(static_cast<size_t>(TokenMask::WordsFor(c.vocab_size)), 0);
      for (const LogitAdjustment& a : ch.sample_next->adjust) {
        const uint64_t bit = uint64_t{1} << (a.id & 63);
        if (a.id < 0 || a.id >= c.vocab_size || (adjusted[static_cast<size_t>(a.id / 64)] & bit) != 0) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": adjusted token id ", a.id,
                                                         " is outside the vocabulary [0, ", c.vocab_size,
                                                         ") or repeated"));
        }
        adjusted[static_cast<size_t>(a.id / 64)] |= bit;
      }
    }
    for (size_t i = 0; i < ch.tokens.size(); ++i) {
      if (ch.tokens[i] < 0 || ch.tokens[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": token id ", ch.tokens[i],
                                                       " at index ", i, " is outside the vocabulary [0, ",
                                                       c.vocab_size, ")"));
      }
    }
    if (const auto& score = ch.score) {
      if (!ch.all_logits) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": score needs all_logits"));
      }
      if (score->targets.size() != ch.tokens.size()) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": ", score->targets.size(),
                                                       " score targets for ", ch.tokens.size(), " tokens"));
      }
      for (const int32_t t : score->targets) {
        if (t < -1 || t >= c.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": score target ", t,
                                                         " is outside the vocabulary [0, ", c.vocab_size, ") and not -1"));
        }
      }
      if (score->top > kMaxTopLogprobs) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", ch.seq_id, ": score top ", score->top, " above ", kMaxTopLogprobs));
      }
    }
    const int64_t len = kv.length(ch.seq_id), end = len + static_cast<int64_t>(ch.tokens.size());
    if (end > c.context_length()) {
      return absl::OutOfRangeError(absl::StrCat("sequence ", ch.seq_id, ": ", end,
                                                " positions exceed the model's context of ", c.context_length()));
    }
    blocks_needed += kv.GrowthBlocks(ch.seq_id, static_cast<int64_t>(ch.tokens.size()));
  }
  if (blocks_needed > kv.free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: the step needs ", blocks_needed,
                                                     " blocks, ", kv.free_blocks(), " are free"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> StepHeader(Communicator& comm, const absl::Status& local, int64_t local_rows) {
  std::vector<int64_t> header = {local.ok() ? 0 : 1, local.ok() ? local_rows : 0};
  comm.AllReduceSum(header);
  if (!local.ok()) return local;
  if (header[0] > 0) {
    return absl::AbortedError(absl::StrCat("step abandoned: ", header[0], " other rank(s) rejected their input"));
  }
  return header[1];
}

absl::StatusOr<int64_t> BeginStep(const ModelConfig& c, Communicator& comm, KvBlockAllocator& kv,
                                  const std::vector<SequenceChunk>& chunks) {
  const absl::Status local = ValidateStepChunks(c, kv, chunks);
  int64_t rows = 0;
  for (const SequenceChunk& ch : chunks) rows += static_cast<int64_t>(ch.tokens.size());
  MOE_ASSIGN_OR_RETURN(const int64_t global_rows, StepHeader(comm, local, rows));
  if (global_rows == 0) return global_rows;
  for (const SequenceChunk& ch : chunks) {
    const absl::Status s = kv.Reserve(ch.seq_id, kv.length(ch.seq_id) + static_cast<int64_t>(ch.tokens.size()));
    MOE_CHECK(s.ok(), s.ToString());  // ValidateStepChunks counted the blocks
  }
  return global_rows;
}

ScoreTargets NextTokenTargets(std::span<const int32_t> tokens, int64_t first, int64_t n, uint32_t top) {
  ScoreTargets s{{}, top};
  const int64_t size = static_cast<int64_t>(tokens.size());
  for (int64_t q = first; q < first + n; ++q) s.targets.push_back(q + 1 < size ? tokens[static_cast<size_t>(q + 1)] : -1);
  return s;
}

ChunkLogits WantedRows(const SequenceChunk& ch, int64_t start) {
  const int64_t n = static_cast<int64_t>(ch.tokens.size());
  const int64_t first = ch.all_logits ? 0 : n - 1;
  ChunkLogits cl;
  cl.seq_id = ch.seq_id;
  cl.first_position = start + first;
  cl.rows = n - first;
  return cl;
}

void AdvanceLengths(KvBlockAllocator& kv, const std::vector<SequenceChunk>& chunks) {
  for (const SequenceChunk& ch : chunks) {
    kv.Append(ch.seq_id, ch.tokens);
  }
}

}  // namespace moe
