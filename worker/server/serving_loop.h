// The lock-step serving loop of one worker rank: takes the coordinator's Assign / Cancel / Shutdown
// from an Inbox at step boundaries, runs the rank's sequences on its engine (the CPU Engine or the
// GpuEngine: any StepEngine) with iteration-level batching, and sends Tokens / Scored / Finished /
// Heartbeat to an Outbox.
//
// RunOnce() is a COLLECTIVE over the engine's Communicator, like Engine::Step: every rank calls it
// the same number of times. Each iteration:
//   1. handle the inbox (Cancel frees the sequence's KV blocks and sends Finished(CANCELLED) at once);
//   2. all-reduce (MAX) of the stop flag (Shutdown received, or the coordinator stream lost), so that
//      every rank leaves the loop in the same iteration;
//   3. admit waiting sequences as the KV cache allows (BatchPlanner: on demand, or their worst
//      case reserved; on demand, one that does not fit preempts running ones of a higher priority
//      value), blocks shared through prefix caching counted once; with prefix caching, a
//      generation whose prompt's next uncached block a running sequence is still prefilling waits
//      until that block is cached and attaches it, instead of computing the same prefix again (n
//      completions of one prompt, a burst of requests with one system prompt);
//   4. plan each running sequence's next chunk (prefill chunks within max_batch_tokens, then one
//      token a step); while the step's new KV blocks do not fit, preempt a sequence (the last in
//      priority and admission order, BatchPlanner::Victim; its
//      blocks freed, its generated tokens kept: readmitted, it computes prompt + tokens again,
//      attaching what the prefix cache still holds, and goes on as if never stopped: its tokens
//      are sampled with the same step numbers);
//      one Engine::Step with the chunks;
//   5. sample (penalties, then a JSON object's mask when asked, then SampleToken with step = tokens generated so far: the rule of GenerateAll, so tokens
//      equal moe-cli's; the engine samples unless the request wants top alternatives), send results, finish sequences (EOS unless ignore_eos, a stop token id,
//      max_tokens, the context end), free their KV blocks;
//   6. a Heartbeat when one is due (every heartbeat_interval) or a sequence finished (the first
//      iteration sends one before anything else, so that a KeepAliveOutbox has it to repeat during
//      the first step);
//   7. when every rank was idle (global_rows == 0), wait on the inbox for a short, growing time
//      instead of spinning.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moe/v1/cluster.pb.h"
#include "worker/step_engine.h"
#include "worker/server/batch_planner.h"
#include "worker/server/inbox.h"
#include "worker/server/outbox.h"
#include "worker/server/served_sequence.h"

namespace moe {

struct ServingLoopOptions {
  int64_t max_batch_tokens = 2048;  // tokens per step over this rank's sequences (prefill chunking)
  std::chrono::milliseconds heartbeat_interval{1000};
  // Idle wait on the inbox after an all-idle step: starts at idle_wait_min, doubles up to idle_wait_max.
  std::chrono::milliseconds idle_wait_min{2};
  std::chrono::milliseconds idle_wait_max{20};
  // The vocabulary's texts (RegisterResponse.token_texts) for JSON-object generation; null when the
  // coordinator sent none (a model without a tokenizer), and then such requests finish with an error.
  std::shared_ptr<const TokenTextTrie> vocabulary = nullptr;
  KvAdmission kv_admission = KvAdmission::kOnDemand;
};

// Why the loop stopped. Ordered by severity: the ranks agree on the MAX.
enum class StopReason : int64_t { kNone = 0, kShutdown = 1, kCoordinatorLost = 2 };

class ServingLoop {
 public:
  // `engine`, `inbox` and `outbox` must outlive the loop.
  ServingLoop(StepEngine& engine, Inbox& inbox, Outbox& outbox, ServingLoopOptions opts = {});

  // One iteration (collective). Returns false once the ranks have agreed to stop; the remaining
  // sequences are then freed (after Shutdown each gets Finished(CANCELLED)) and later calls return
  // false at once without any collective.
  bool RunOnce();
  // RunOnce until it returns false; the agreed reason.
  StopReason Run();

  StopReason stop_reason() const { return stop_; }          // agreed over ranks; kNone while running
  bool received_shutdown() const { return got_shutdown_; }  // this rank's inbox had a Shutdown
  int64_t iterations() const { return iterations_; }        // RunOnce calls that took part in the loop
  uint64_t steps() const { return steps_; }                 // engine steps that carried tokens (any rank)
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }  // assigned, not finished
  int64_t num_running() const { return static_cast<int64_t>(planner_.running().size()); }  // admitted to the KV cache
  uint64_t preemptions() const { return preemptions_; }  // sequences preempted for KV room since start
  moe::v1::WorkerStats Stats() const;

 private:
  void HandleInbox();
  void OnAssign(const moe::v1::Assign& a);
  // Whether a running sequence is prefilling the first block of `s`'s prompt that the prefix cache
  // does not hold yet (it holds `cached_blocks`; the same tokens up to that block's end), so `s`
  // should wait for it.
  bool PrefixBeingComputed(const ServedSequence& s, int64_t cached_blocks) const;
  void OnCancel(uint64_t seq_id);
  // Each running sequence's tokens for the next step (PlanStepTokens over planner_.running()).
  std::vector<int64_t> PlanChunks() const;
  // Preempts a running sequence (BatchPlanner::Victim): frees its KV blocks; it waits to compute its
  // context again.
  void PreemptOne();
  // The mask cache of the Assign's JSON format (json_object, or its json_schema compiled); an error
  // when the rank has no vocabulary or the schema does not compile.
  // The mask cache of a constrained Assign's spec (a JSON schema, choices, regex: JsonMaskCache; a
  // grammar: GbnfMaskCache), made at its first use; InvalidArgument naming the field when the spec
  // does not compile.
  struct SpecMasks {
    std::shared_ptr<JsonMaskCache> json;
    std::shared_ptr<GbnfMaskCache> gbnf;
  };
  absl::StatusOr<SpecMasks> MasksFor(const moe::v1::Assign& a);
  // Sends Finished, frees the sequence's KV blocks and forgets it.
  void Finish(uint64_t seq_id, moe::v1::Finished::Reason reason, const std::string& error = "");
  // After a step: the outputs of one sequence's chunk of `tokens` tokens.
  void OnChunkDone(uint64_t seq_id, int64_t tokens, const ChunkLogits& out);
  // A generated token: the engine's pick (with the top alternatives when asked).
  void OnGenerated(uint64_t seq_id, ServedSequence& s, const ChunkLogits& pick);
  // Rows of a generation's prompt (Assign.prompt_logprobs) from position `first`: their logprobs,
  // ranks and top alternatives; sent once the rows reach the prompt's last token.
  void AddPromptLogprobs(ServedSequence& s, int64_t first, const ChunkLogits& out);
  // What the engine samples for a chunk of `s` (SequenceChunk::sample_next): a generation's next
  // token (scoring wants whole rows). The `last` chunk of its context carries its constraints'
  // allowed ids (and sets s.none_allowed), its penalties' adjustments and its top_logprobs.
  std::optional<SampleNext> EngineSamples(ServedSequence& s, bool last);
  void SendHeartbeat();
  void StopAll();

  StepEngine& engine_;
  Inbox& inbox_;
  Outbox& outbox_;
  ServingLoopOptions opts_;
  BatchPlanner planner_;
  // The mask caches of the JSON schemas requested lately (json_object's under ""), shared by their
  // sequences; at most kMaxSchemas (then the map starts over; running sequences keep theirs).
  static constexpr size_t kMaxSchemas = 64;
  std::map<std::string, SpecMasks> masks_;
  std::map<uint64_t, ServedSequence> seqs_;

  StopReason local_stop_ = StopReason::kNone;
  StopReason stop_ = StopReason::kNone;
  bool got_shutdown_ = false;
  bool stopped_ = false;
  int64_t iterations_ = 0;
  uint64_t steps_ = 0;
  uint64_t preemptions_ = 0;
  bool finished_since_heartbeat_ = false;
  std::chrono::steady_clock::time_point last_heartbeat_;
  std::chrono::milliseconds idle_wait_;
};

}  // namespace moe
