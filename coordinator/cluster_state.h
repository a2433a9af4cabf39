// The coordinator's view of the worker job and of every sequence in flight, behind one lock.
//
// Cluster life cycle (one "epoch" per worker job):
//   forming  -- every rank Registers; the calls return together once all world_size have --
//   loading  -- each rank opens its Serve stream at once (Join: its rank and the job's id), loads
//               its shard and sends Loaded; a stream that closes meanwhile is a loss --
//   serving  -- requests are admitted and dispatched --
//   broken   -- a rank was lost (stream closed, or silent for the heartbeat timeout): the
//               surviving ranks get Shutdown (an MPI job cannot continue without one of its
//               ranks), and the next Register starts a new epoch, so a restarted worker job is
//               picked up without restarting the coordinator. The sequences in flight fail with
//               UNAVAILABLE, or with a resume timeout they are held: once a new job serves within
//               it they are queued again (before anything new of their priority), each
//               generation with the tokens it had streamed (Assign.resume_tokens), so its client's
//               stream goes on where it stopped; at the timeout they fail, and so does one that
//               was running at a loss before (it may be what brings the workers down).
// Draining (shutdown) overrides all of these: nothing new is admitted.
//
// Sequences: Submit() queues them in the Scheduler and dispatches Assigns to ranks; the worker's
// Tokens / Scored / Finished come back through OnWorkerMessage() and are posted to the
// submitting request's Mailbox. Finished frees the rank's slot and the queue refills it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "coordinator/mailbox.h"
#include "coordinator/placement.h"
#include "coordinator/scheduler.h"
#include "coordinator/serving_stats.h"
#include "coordinator/worker_link.h"
#include "moe/v1/cluster.pb.h"
#include "moe/v1/inference.pb.h"
#include "worker/model/config.h"

namespace moe {

struct ClusterSetup {
  std::string model_dir;
  ModelConfig config;
  PlacementPlan plan;  // its world_size is the job's
  SchedulerLimits limits;
  std::chrono::duration<double> heartbeat_timeout{10.0};
  // How long sequences in flight when a rank is lost wait for a new worker job to serve them
  // (--resume-timeout-s); 0: they fail at once.
  std::chrono::duration<double> resume_timeout{0.0};
  std::vector<std::string> token_texts = {};  // TextCodec::TokenTexts, sent at registration; empty without a tokenizer
};

// Which rank of which epoch a Serve stream belongs to (known after its Loaded).
struct StreamBinding {
  uint64_t epoch = 0;
  int rank = -1;
};

struct SeqSubmission {
  v1::Assign assign;  // seq_id is filled in by Submit
  int64_t reserve_positions = 0;
};

struct RankStatsView {
  int rank = 0;
  int64_t running_sequences = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t prefix_cache_queried_tokens = 0;
  int64_t prefix_cache_hit_tokens = 0;
  int64_t kv_blocks_cached = 0;
  uint64_t preemptions = 0;
};

struct ClusterSnapshot {
  int64_t waiting = 0;
  int64_t running = 0;
  double kv_cache_usage = 0;
  std::vector<RankStatsView> ranks;
  std::string load_stats_json;  // rank 0's
  uint64_t engine_steps = 0;    // rank 0's
};

class ClusterState {
 public:
  using Clock = std::chrono::steady_clock;

  ClusterState(ClusterSetup setup, ServingStats& stats);

  // `fn(serving)` runs (under the state's lock: keep it short, never call back) whenever the
  // serving state changes, and once now.
  void SetServingListener(std::function<void(bool)> fn);

  // --- the Cluster service ---
  // Blocks until every rank registered (or `cancelled()` turns true, or draining), then returns
  // the plan. INVALID_ARGUMENT / FAILED_PRECONDITION for a worker that does not fit this job.
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& request,
                                                const std::function<bool()>& cancelled);
  // A Serve stream's first message (Join, sent as soon as Register answered): binds the stream to
  // its rank of the current job. FAILED_PRECONDITION, naming why, for a rank of another job (an
  // older one left over, or one a restarted coordinator never registered) or of a job that is no
  // longer loading (it was lost).
  absl::StatusOr<StreamBinding> BindStream(const v1::Join& join, std::shared_ptr<WorkerLink> link);
  // Everything after Join: Loaded (counted while the job loads), Heartbeat, results.
  void OnWorkerMessage(const StreamBinding& binding, const v1::WorkerMessage& message);
  void OnStreamClosed(const StreamBinding& binding);
  // Declares ranks lost that said nothing for the heartbeat timeout (while serving); fails the
  // sequences held since a loss once the resume timeout has passed.
  void CheckLiveness(Clock::time_point now);

  // --- the Inference service ---
  // Admits all `seqs` or none. UNAVAILABLE when not serving, RESOURCE_EXHAUSTED when the queue is
  // full. Returns the seq ids, in order; results arrive in `mailbox`.
  absl::StatusOr<std::vector<uint64_t>> Submit(std::vector<SeqSubmission> seqs, std::shared_ptr<Mailbox> mailbox);
  // The request no longer wants `seq_id`: dropped from the queue, or Cancel sent to its rank (the
  // slot is freed when the rank's Finished arrives). Unknown ids are ignored.
  void Cancel(uint64_t seq_id);

  bool serving() const;
  // Why requests are refused right now (for UNAVAILABLE messages).
  std::string NotServingReason() const;

  // --- shutdown ---
  void BeginDrain();
  // True once no sequence is in flight; false at the deadline.
  bool WaitIdle(Clock::time_point deadline);
  // Ends every sequence in flight with `why` (posted to its request).
  void FailAll(const absl::Status& why);
  void ShutdownWorkers();
  // True once the Serve stream of every rank of the current job that had loaded has closed; false
  // at the deadline. A rank still loading reads its Shutdown only once loaded: it is not waited for.
  bool WaitWorkersGone(Clock::time_point deadline);

  // --- introspection ---
  v1::ClusterInfo ClusterInfo() const;
  ClusterSnapshot Snapshot() const;
  const ClusterSetup& setup() const { return setup_; }

 private:
  enum class Phase { kForming, kLoading, kServing, kBroken };

  struct RankRecord {
    bool registered = false;
    uint64_t registration = 0;  // which Register call holds the slot
    std::string host, device;
    int64_t memory_bytes = 0;
    bool loaded = false;
    bool alive = false;  // a bound Serve stream that has not closed
    bool silent = false;  // alive, but its heartbeats stopped for --heartbeat-timeout-s (a hung rank)
    std::shared_ptr<WorkerLink> link;
    int64_t weight_bytes = 0;
    int64_t kv_blocks_total = 0;
    int64_t kv_blocks_used = 0;
    int64_t running_sequences = 0;
    int64_t prefix_cache_queried_tokens = 0;
    int64_t prefix_cache_hit_tokens = 0;
    int64_t kv_blocks_cached = 0;
    uint64_t preemptions = 0;
    bool prefix_caching = false;
    int64_t kv_block_size = 0;  // 0: not reported (then its evictions are not matched to prefix keys)
    int64_t max_batch_tokens = 0;  // 0: not reported
    uint64_t steps = 0;
    std::string load_stats_json;
    Clock::time_point last_seen;
  };

  struct SeqEntry {
    std::shared_ptr<Mailbox> mailbox;  // null once the request stopped listening
    v1::Assign assign;                 // as submitted (sent again should its worker job be lost)
    int rank = -1;                     // -1: waiting in the queue, or held
    int64_t reserve_positions = 0;
    bool held = false;                 // its worker job was lost; it waits for the next one
    bool resumed = false;              // it was running at a loss before (then a second one fails it)
    std::vector<int32_t> generated;    // tokens it has streamed (generation)
    Clock::time_point submitted;       // its admission (Submit): Assign.queued_seconds counts from here
    // With prefix affinity, a generation's prompt and then its tokens as they come: on Finished,
    // what its rank now holds cached (Scheduler::NoteCached); `keys` are the prompt's PrefixKeys,
    // extended then over the answer.
    std::vector<int32_t> tokens;
    std::vector<uint64_t> keys;
  };

  int world_size() const { return setup_.plan.world_size(); }
  // Whether sequences in flight outlive a lost worker job (--resume-timeout-s above 0).
  bool resumes() const { return setup_.resume_timeout.count() > 0; }
  // All *Locked functions expect mu_ held.
  bool ServingLocked() const;
  std::string NotServingReasonLocked() const;
  void UpdateServingLocked();
  void StartEpochLocked();
  void OnLoadedLocked(int rank, const v1::Loaded& loaded);
  void BreakLocked(const std::string& reason);
  void FailAllLocked(const absl::Status& why);
  // The sequences in flight wait for the next worker job (held), or fail without a resume timeout.
  void HoldAllLocked(const std::string& reason);
  // Queues the held sequences again, ahead of anything new, generations with their tokens so far.
  void ResumeHeldLocked();
  void DispatchLocked();
  void PublishLocked();
  absl::Status CheckModelDir(const std::string& worker_dir) const;

  const ClusterSetup setup_;
  const std::string placement_json_;
  ServingStats& stats_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // phase changes, sequences finishing, streams closing
  std::function<void(bool)> serving_listener_;
  bool last_serving_ = false;
  bool draining_ = false;
  Phase phase_ = Phase::kForming;
  uint64_t epoch_ = 1;
  // The current epoch's worker job, as its ranks name it (RegisterResponse.job_id, Join): drawn at
  // random for each epoch, so that ids of an earlier coordinator process do not match either.
  uint64_t job_id_;
  uint64_t next_registration_ = 1;
  std::string broken_reason_;
  int64_t held_ = 0;  // sequences held since a loss
  Clock::time_point held_since_;
  std::string held_reason_;
  std::vector<RankRecord> ranks_;
  Scheduler scheduler_;
  Clock::time_point last_liveness_check_;  // CheckLiveness's previous call (at first: construction)
  std::unordered_map<uint64_t, SeqEntry> seqs_;
  uint64_t next_seq_id_ = 1;
};

}  // namespace moe
