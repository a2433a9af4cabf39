#include "coordinator/cluster_state.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <utility>

namespace moe {
namespace {

v1::CoordinatorMessage ShutdownMessage() {
  v1::CoordinatorMessage m;
  m.mutable_shutdown();
  return m;
}

// Register calls and request handlers re-check for cancellation this often while they wait.
constexpr std::chrono::milliseconds kPollInterval(100);

// The KV positions a rank's cache holds, as it reported them; 0 when it did not (it decides).
int64_t CachePositions(int64_t blocks, int64_t block_size) {
  int64_t positions = 0;
  if (blocks <= 0 || block_size <= 0 || __builtin_mul_overflow(blocks, block_size, &positions)) return 0;
  return positions;
}

// A worker job's id: random, so that a rank of a job this process never registered (a restarted
// coordinator's) cannot match by chance; never 0, which a Join without one carries.
uint64_t NewJobId() {
  // A generator of its own each call (once a job), seeded with 128 bits of the OS's entropy: no
  // state shared between the ClusterStates of one process (tests run several).
  std::random_device entropy;
  std::seed_seq seed{entropy(), entropy(), entropy(), entropy()};
  std::mt19937_64 gen(seed);
  uint64_t id = 0;
  while (id == 0) id = gen();
  return id;
}

}  // namespace

ClusterState::ClusterState(ClusterSetup setup, ServingStats& stats)
    : setup_(std::move(setup)),
      placement_json_(setup_.plan.ToJson().dump()),
      stats_(stats),
      job_id_(NewJobId()),
      ranks_(static_cast<size_t>(setup_.plan.world_size())),
      scheduler_(setup_.limits, setup_.plan.world_size()),
      last_liveness_check_(Clock::now()) {}

void ClusterState::SetServingListener(std::function<void(bool)> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  serving_listener_ = std::move(fn);
  last_serving_ = ServingLocked();
  if (serving_listener_) serving_listener_(last_serving_);
}

bool ClusterState::ServingLocked() const { return phase_ == Phase::kServing && !draining_; }

bool ClusterState::serving() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ServingLocked();
}

std::string ClusterState::NotServingReasonLocked() const {
  if (draining_) return "coordinator is shutting down";
  int registered = 0, loaded = 0;
  for (const RankRecord& r : ranks_) {
    registered += r.registered;
    loaded += r.loaded;
  }
  switch (phase_) {
    case Phase::kForming:
      return absl::StrCat("cluster not ready: ", registered, " of ", world_size(), " ranks registered");
    case Phase::kLoading:
      return absl::StrCat("cluster not ready: ", loaded, " of ", world_size(), " ranks loaded");
    case Phase::kBroken:
      return absl::StrCat("cluster not serving: ", broken_reason_, "; waiting for the worker job to register again");
    case Phase::kServing:
      break;
  }
  return "serving";
}

std::string ClusterState::NotServingReason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return NotServingReasonLocked();
}

void ClusterState::UpdateServingLocked() {
  const bool now = ServingLocked();
  if (now != last_serving_) {
    last_serving_ = now;
    if (serving_listener_) serving_listener_(now);
  }
  cv_.notify_all();
}

void ClusterState::PublishLocked() {
  stats_.SetQueue(scheduler_.waiting() + held_, scheduler_.running());
  int64_t used = 0, total = 0, queried = 0, hits = 0;
  uint64_t preemptions = 0;
  for (const RankRecord& r : ranks_) {
    if (!r.loaded) continue;
    used += r.kv_blocks_used;
    total += r.kv_blocks_total;
    queried += r.prefix_cache_queried_tokens;
    hits += r.prefix_cache_hit_tokens;
    preemptions += r.preemptions;
  }
  stats_.SetKvCacheUsage(total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0);
  stats_.SetPrefixCache(queried, hits);
  stats_.SetPreemptions(preemptions);
}

absl::Status ClusterState::CheckModelDir(const std::string& worker_dir) const {
  // Workers may run on other hosts where the folder lives elsewhere; compare configs only when
  // the worker's folder is visible here.
  namespace fs = std::filesystem;
  std::error_code ec;
  if (worker_dir.empty() || !fs::exists(fs::path(worker_dir) / "config.json", ec)) return absl::OkStatus();
  if (fs::equivalent(worker_dir, setup_.model_dir, ec)) return absl::OkStatus();
  absl::StatusOr<ModelConfig> theirs = ModelConfig::FromModelDir(worker_dir);
  if (!theirs.ok() || theirs->ToJson() != setup_.config.ToJson()) {
    return absl::FailedPreconditionError(absl::StrCat("model_dir: the worker's ", worker_dir,
                                                      " is not the coordinator's model (", setup_.model_dir, ")"));
  }
  return absl::OkStatus();
}

void ClusterState::StartEpochLocked() {
  ++epoch_;
  job_id_ = NewJobId();
  for (RankRecord& r : ranks_) {
    // Streams of the old job stay open until their workers leave; they are no longer ours.
    r = RankRecord{};
  }
  phase_ = Phase::kForming;
  broken_reason_.clear();
  scheduler_.Reset(world_size());
  PublishLocked();
}

void ClusterState::FailAllLocked(const absl::Status& why) {
  for (auto& [id, e] : seqs_) {
    if (e.mailbox) e.mailbox->Post({id, {}, why});
  }
  seqs_.clear();
  held_ = 0;
  held_reason_.clear();
  scheduler_.Reset(world_size());
  PublishLocked();
  cv_.notify_all();
}

void ClusterState::HoldAllLocked(const std::string& reason) {
  if (!resumes()) {
    FailAllLocked(absl::UnavailableError(reason));
    return;
  }
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    SeqEntry& e = it->second;
    if (!e.mailbox) {  // cancelled: nobody waits for it
      it = seqs_.erase(it);
      continue;
    }
    if (e.held) {
      ++it;
      continue;
    }
    // A sequence running at a second loss may be what brings the workers down: it is not resumed
    // again, so one bad request cannot use up every restart.
    if (e.rank >= 0 && e.resumed) {
      e.mailbox->Post({it->first, {}, absl::UnavailableError(absl::StrCat(
                                          reason, "; the request was running at an earlier loss too and is not "
                                                  "resumed again"))});
      it = seqs_.erase(it);
      continue;
    }
    e.resumed = e.resumed || e.rank >= 0;
    e.held = true;
    e.rank = -1;
    ++held_;
    ++it;
  }
  // A loss while sequences were already held (the new job failed too) keeps the first deadline.
  if (held_ > 0 && held_reason_.empty()) {
    held_since_ = Clock::now();
    held_reason_ = reason;
    std::fprintf(stderr, "moe-coordinator: holding %lld sequences for up to %.0f s (--resume-timeout-s)\n",
                 static_cast<long long>(held_), setup_.resume_timeout.count());
  }
  scheduler_.Reset(world_size());
  PublishLocked();
  cv_.notify_all();
}

void ClusterState::ResumeHeldLocked() {
  if (held_ == 0) return;
  std::vector<uint64_t> ids;
  for (const auto& [id, e] : seqs_) {
    if (e.held) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());  // in arrival order
  std::vector<SequenceDemand> demands;
  for (uint64_t id : ids) {
    SeqEntry& e = seqs_.at(id);
    e.held = false;
    e.assign.mutable_resume_tokens()->Assign(e.generated.begin(), e.generated.end());
    demands.push_back({id, e.reserve_positions, e.keys, e.assign.priority()});
  }
  scheduler_.Readmit(demands);
  std::fprintf(stderr, "moe-coordinator: resuming %zu sequences held since %s\n", ids.size(), held_reason_.c_str());
  held_ = 0;
  held_reason_.clear();
}

void ClusterState::BreakLocked(const std::string& reason) {
  if (phase_ == Phase::kBroken) return;
  std::fprintf(stderr, "moe-coordinator: %s\n", reason.c_str());
  phase_ = Phase::kBroken;
  broken_reason_ = reason;
  HoldAllLocked(reason);
  for (RankRecord& r : ranks_) {
    if (r.alive && r.link) r.link->Send(ShutdownMessage());
  }
  UpdateServingLocked();
}

absl::StatusOr<v1::RegisterResponse> ClusterState::Register(const v1::RegisterRequest& request,
                                                            const std::function<bool()>& cancelled) {
  if (request.world_size() != world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("world_size: the worker job has ", request.world_size(),
                                                   " ranks, the coordinator expects ", world_size(),
                                                   " (--world-size)"));
  }
  if (request.rank() < 0 || request.rank() >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank: ", request.rank(), " is outside [0, ", world_size(), ")"));
  }
  MOE_RETURN_IF_ERROR(CheckModelDir(request.model_dir()));

  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError(NotServingReasonLocked());
  if (phase_ != Phase::kForming) {
    // A registration after the cluster formed means a new worker job: the old one cannot be
    // serving any more (or is about to stop), so start over.
    if (phase_ != Phase::kBroken) {
      BreakLocked(absl::StrCat("rank ", request.rank(), " registered again: the worker job restarted"));
    }
    StartEpochLocked();
  }
  const uint64_t epoch = epoch_;
  const uint64_t registration = next_registration_++;
  RankRecord& r = ranks_[request.rank()];
  r.registered = true;
  r.registration = registration;
  r.host = request.host();
  r.device = request.device();
  r.memory_bytes = request.memory_bytes();
  bool all = true;
  for (const RankRecord& x : ranks_) all = all && x.registered;
  if (all) {
    phase_ = Phase::kLoading;
    UpdateServingLocked();
  }
  while (epoch_ == epoch && phase_ == Phase::kForming && !draining_) {
    if (cancelled()) {
      // The worker gave up (or died): free its slot so a retry or a new job can take it.
      if (ranks_[request.rank()].registration == registration) ranks_[request.rank()] = RankRecord{};
      return absl::CancelledError("registration cancelled");
    }
    cv_.wait_for(lock, kPollInterval);
  }
  if (draining_) return absl::UnavailableError(NotServingReasonLocked());
  if (epoch_ != epoch || ranks_[request.rank()].registration != registration) {
    return absl::AbortedError("registration superseded by a newer one for the same rank");
  }
  v1::RegisterResponse response;
  response.set_placement_json(placement_json_);
  response.set_model_dir(setup_.model_dir);
  response.set_job_id(job_id_);
  for (const std::string& t : setup_.token_texts) response.add_token_texts(t);
  return response;
}

absl::StatusOr<StreamBinding> ClusterState::BindStream(const v1::Join& join, std::shared_ptr<WorkerLink> link) {
  std::lock_guard<std::mutex> lock(mu_);
  const int rank = join.rank();
  if (rank < 0 || rank >= world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("join.rank: ", rank, " is outside [0, ", world_size(), ")"));
  }
  if (join.job_id() != job_id_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", rank, " is of worker job ", absl::Hex(join.job_id()), ", not of the coordinator's current one (",
        absl::Hex(job_id_), "): a newer job registered since, or the coordinator restarted; this rank's job is over"));
  }
  RankRecord& r = ranks_[rank];
  if (phase_ != Phase::kLoading) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank, ": its worker job is no longer loading (", NotServingReasonLocked(), ")"));
  }
  if (r.alive) return absl::AlreadyExistsError(absl::StrCat("rank ", rank, " already has a Serve stream"));
  r.link = std::move(link);
  r.alive = true;
  r.silent = false;
  r.last_seen = Clock::now();
  cv_.notify_all();
  return StreamBinding{epoch_, rank};
}

void ClusterState::OnLoadedLocked(int rank, const v1::Loaded& loaded) {
  RankRecord& r = ranks_[rank];
  r.loaded = true;
  r.weight_bytes = loaded.weight_bytes();
  r.kv_blocks_total = loaded.kv_blocks_total();
  r.prefix_caching = loaded.prefix_caching();
  r.kv_block_size = loaded.kv_block_size();
  r.max_batch_tokens = loaded.max_batch_tokens();
  bool all = true;
  for (const RankRecord& x : ranks_) all = all && x.loaded;
  if (all) {
    phase_ = Phase::kServing;
    scheduler_.Reset(world_size());
    for (int x = 0; x < world_size(); ++x) {
      scheduler_.SetCapacity(x, CachePositions(ranks_[x].kv_blocks_total, ranks_[x].kv_block_size));
    }
    // Placement follows prompt prefixes only where every rank caches them.
    bool caching = true;
    for (const RankRecord& x : ranks_) caching = caching && x.prefix_caching;
    scheduler_.SetPrefixAffinity(caching);
    // Silence while other ranks were still loading does not count against anyone.
    for (RankRecord& x : ranks_) x.last_seen = Clock::now();
    std::fprintf(stderr, "moe-coordinator: all %d ranks loaded, serving\n", world_size());
    ResumeHeldLocked();
    DispatchLocked();
  }
  PublishLocked();
  UpdateServingLocked();
}

void ClusterState::OnWorkerMessage(const StreamBinding& b, const v1::WorkerMessage& m) {
  std::lock_guard<std::mutex> lock(mu_);
  if (b.epoch != epoch_) return;  // a stream of an earlier worker job
  RankRecord& r = ranks_[b.rank];
  r.last_seen = Clock::now();
  // Results for a sequence count only from the rank it was assigned to.
  auto find_own = [&](uint64_t seq) -> SeqEntry* {
    auto it = seqs_.find(seq);
    return it != seqs_.end() && it->second.rank == b.rank ? &it->second : nullptr;
  };
  switch (m.kind_case()) {
    case v1::WorkerMessage::kLoaded:
      // Counted while the job loads, once a rank. After a loss the rank was sent Shutdown, which
      // its serving loop obeys once it has loaded.
      if (phase_ == Phase::kLoading && !r.loaded) OnLoadedLocked(b.rank, m.loaded());
      break;
    case v1::WorkerMessage::kHeartbeat: {
      const v1::WorkerStats& s = m.heartbeat().stats();
      r.running_sequences = s.running_sequences();
      r.kv_blocks_used = s.kv_blocks_used();
      r.prefix_cache_queried_tokens = s.prefix_cache_queried_tokens();
      r.prefix_cache_hit_tokens = s.prefix_cache_hit_tokens();
      r.kv_blocks_cached = s.kv_blocks_cached();
      r.preemptions = s.preemptions();
      if (s.kv_blocks_total() > 0) {
        r.kv_blocks_total = s.kv_blocks_total();
        scheduler_.SetCapacity(b.rank, CachePositions(r.kv_blocks_total, r.kv_block_size));
      }
      r.steps = s.steps();
      if (!s.load_stats_json().empty()) r.load_stats_json = s.load_stats_json();
      // A rank's block hashes are the scheduler's prefix keys when its blocks are as long as a key's chunk.
      if (r.kv_block_size == kPrefixKeyTokens) {
        scheduler_.Forget(b.rank, {m.heartbeat().evicted_prefix_keys().data(),
                                   static_cast<size_t>(m.heartbeat().evicted_prefix_keys_size())});
      }
      PublishLocked();
      break;
    }
    case v1::WorkerMessage::kTokens:
      if (SeqEntry* e = find_own(m.tokens().seq_id())) {
        if (!e->tokens.empty()) e->tokens.insert(e->tokens.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
        if (resumes()) {
          e->generated.insert(e->generated.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
        }
        if (e->mailbox) e->mailbox->Post({m.tokens().seq_id(), m, {}});
      }
      break;
    case v1::WorkerMessage::kPromptLogprobs:
      if (SeqEntry* e = find_own(m.prompt_logprobs().seq_id()); e && e->mailbox) {
        e->assign.clear_prompt_logprobs();  // delivered: a resumed sequence does not send them again
        e->mailbox->Post({m.prompt_logprobs().seq_id(), m, {}});
      }
      break;
    case v1::WorkerMessage::kScored:
      if (SeqEntry* e = find_own(m.scored().seq_id()); e && e->mailbox) e->mailbox->Post({m.scored().seq_id(), m, {}});
      break;
    case v1::WorkerMessage::kFinished: {
      const uint64_t seq = m.finished().seq_id();
      SeqEntry* e = find_own(seq);
      if (!e) break;
      if (e->mailbox) e->mailbox->Post({seq, m, {}});
      // Its rank holds the prompt and all generated tokens but the last (never fed back).
      if (e->tokens.size() > 1) {
        e->tokens.pop_back();
        ExtendPrefixKeys(e->keys, e->tokens, e->assign.prefix_root());
        scheduler_.NoteCached(b.rank, e->keys);
      }
      seqs_.erase(seq);
      scheduler_.Finish(seq);
      DispatchLocked();
      PublishLocked();
      cv_.notify_all();
      break;
    }
    default:
      break;
  }
}

void ClusterState::OnStreamClosed(const StreamBinding& b) {
  std::lock_guard<std::mutex> lock(mu_);
  if (b.epoch != epoch_) return;
  RankRecord& r = ranks_[b.rank];
  r.alive = false;
  r.link.reset();
  if (!draining_ && (phase_ == Phase::kLoading || phase_ == Phase::kServing)) {
    // While loading too: the stream opened before the load, so a job that dies as it loads is
    // seen to (and a new one is then awaited) rather than shown loading for ever.
    BreakLocked(absl::StrCat("rank ", b.rank, " lost", phase_ == Phase::kLoading ? " while its job loaded" : "",
                             ": its Serve stream closed"));
  }
  cv_.notify_all();
}

void ClusterState::CheckLiveness(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  // Checks come every quarter timeout or more often. A longer gap means the coordinator itself did
  // not run (stopped, suspended, starved): the heartbeats that came meanwhile wait unread in its
  // streams, so the ranks' silence is timed from now rather than blamed on them.
  // (At least 100 ms: the monitor's period is at least 20 ms, and a timeout of a few tens of ms,
  // the tests', must not read every check as a gap.)
  const Clock::time_point previous = std::exchange(last_liveness_check_, now);
  if (now - previous > std::max<std::chrono::duration<double>>(setup_.heartbeat_timeout / 2, std::chrono::milliseconds(100))) {
    if (phase_ == Phase::kServing) {
      std::fprintf(stderr, "moe-coordinator: the liveness check did not run for %.1f s; the ranks' heartbeats are timed from now\n",
                   std::chrono::duration<double>(now - previous).count());
    }
    for (RankRecord& r : ranks_) r.last_seen = std::max(r.last_seen, now);
  }
  if (held_ > 0 && now - held_since_ > setup_.resume_timeout) {
    FailAllLocked(absl::UnavailableError(absl::StrCat(held_reason_, "; no worker job served again within ",
                                                      setup_.resume_timeout.count(), " s (--resume-timeout-s)")));
  }
  if (phase_ != Phase::kServing || draining_) return;
  std::string lost;  // the first silent rank names the loss; every silent one is reported lost
  for (int rank = 0; rank < world_size(); ++rank) {
    RankRecord& r = ranks_[rank];
    const double silent = std::chrono::duration<double>(now - r.last_seen).count();
    if (r.alive && silent > setup_.heartbeat_timeout.count()) {
      r.silent = true;  // its stream is still open
      if (lost.empty()) {
        lost = absl::StrCat("rank ", rank, " lost: no heartbeat for ", std::round(silent * 10) / 10,
                            " s (--heartbeat-timeout-s ", setup_.heartbeat_timeout.count(), ")");
      }
    }
  }
  if (!lost.empty()) BreakLocked(lost);
}

void ClusterState::DispatchLocked() {
  const Clock::time_point now = Clock::now();
  std::vector<SequenceDemand> too_large;
  std::vector<SequencePlacement> placed = scheduler_.Dispatch(&too_large);
  for (const SequenceDemand& d : too_large) {  // admitted when a cache held it; none does now
    auto it = seqs_.find(d.seq_id);
    if (it == seqs_.end()) continue;
    if (it->second.mailbox) {
      it->second.mailbox->Post({d.seq_id, {}, absl::InvalidArgumentError(absl::StrCat(
          d.reserve_positions, " positions (prompt + max_tokens), more than any rank's KV cache holds now (",
          scheduler_.LargestCapacity(), "): the ranks' caches shrank since the request was admitted"))});
    }
    seqs_.erase(it);
  }
  for (const SequencePlacement& p : placed) {
    SeqEntry& e = seqs_.at(p.seq_id);
    e.rank = p.rank;
    v1::CoordinatorMessage m;
    // Kept while it may have to be sent again (a scoring batch's prompts can be large).
    if (resumes()) {
      *m.mutable_assign() = e.assign;
    } else {
      *m.mutable_assign() = std::move(e.assign);
      e.assign.Clear();
    }
    m.mutable_assign()->set_seq_id(p.seq_id);
    m.mutable_assign()->set_queued_seconds(std::chrono::duration<float>(now - e.submitted).count());
    if (const auto& link = ranks_[p.rank].link) link->Send(std::move(m));
  }
}

absl::StatusOr<std::vector<uint64_t>> ClusterState::Submit(std::vector<SeqSubmission> seqs,
                                                          std::shared_ptr<Mailbox> mailbox) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ServingLocked()) return absl::UnavailableError(NotServingReasonLocked());
  // A sequence no rank's KV cache could hold is the request's error, said before it is queued (the
  // rank's refusal came back as a worker error, INTERNAL). vLLM refuses a context longer than its
  // KV cache at startup; here the ranks' caches (moe-worker --kv-tokens, GPU memory) are known once
  // they have loaded, and the scheduler places a sequence only on a rank that could hold it
  // (Scheduler::SetCapacity), so the largest counts; where a rank reported none (0), it decides.
  const int64_t largest_cache = scheduler_.LargestCapacity();
  for (const SeqSubmission& q : seqs) {
    if (largest_cache > 0 && q.reserve_positions > largest_cache) {
      const bool generates = q.assign.max_tokens() > 0;
      return absl::InvalidArgumentError(absl::StrCat(
          generates ? "sampling.max_tokens" : "prompt", ": ", q.assign.prompt_size(), " prompt tokens",
          generates ? absl::StrCat(" + max_tokens ", q.assign.max_tokens()) : "", " = ", q.reserve_positions,
          " positions, more than any rank's KV cache holds (", largest_cache,
          "; moe-worker --kv-tokens, --gpu-memory-utilization)"));
    }
  }
  std::vector<SequenceDemand> demands;
  std::vector<uint64_t> ids;
  const bool affinity = scheduler_.prefix_affinity();
  std::vector<std::vector<int32_t>> prompts(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const uint64_t id = next_seq_id_ + i;
    SequenceDemand d{id, seqs[i].reserve_positions, {}, seqs[i].assign.priority()};
    if (affinity && seqs[i].assign.kind() == v1::Assign::KIND_GENERATE) {
      prompts[i].assign(seqs[i].assign.prompt().begin(), seqs[i].assign.prompt().end());
      d.prefix_keys = PrefixKeys(prompts[i], seqs[i].assign.prefix_root());
    }
    demands.push_back(std::move(d));
    ids.push_back(id);
  }
  MOE_RETURN_IF_ERROR(scheduler_.Enqueue(demands));
  next_seq_id_ += seqs.size();
  const Clock::time_point now = Clock::now();
  for (size_t i = 0; i < seqs.size(); ++i) {
    SeqEntry& e = seqs_[ids[i]];
    e.submitted = now;
    e.mailbox = mailbox;
    e.assign = std::move(seqs[i].assign);
    e.reserve_positions = seqs[i].reserve_positions;
    e.tokens = std::move(prompts[i]);
    e.keys = demands[i].prefix_keys;
  }
  DispatchLocked();
  PublishLocked();
  return ids;
}

void ClusterState::Cancel(uint64_t seq_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  SeqEntry& e = it->second;
  if (e.rank < 0) {
    if (e.held && --held_ == 0) held_reason_.clear();
    scheduler_.RemoveWaiting(seq_id);
    seqs_.erase(it);
    PublishLocked();
    cv_.notify_all();
    return;
  }
  if (!e.mailbox) return;  // Cancel already sent
  e.mailbox.reset();
  v1::CoordinatorMessage m;
  m.mutable_cancel()->set_seq_id(seq_id);
  if (const auto& link = ranks_[e.rank].link) link->Send(std::move(m));
}

void ClusterState::BeginDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  // Held sequences cannot resume now: they end with the loss that held them.
  if (held_ > 0) FailAllLocked(absl::UnavailableError(absl::StrCat(held_reason_, "; the coordinator is shutting down")));
  UpdateServingLocked();
}

bool ClusterState::WaitIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return seqs_.empty(); });
}

void ClusterState::FailAll(const absl::Status& why) {
  std::lock_guard<std::mutex> lock(mu_);
  FailAllLocked(why);
}

void ClusterState::ShutdownWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  for (RankRecord& r : ranks_) {
    if (r.alive && r.link) r.link->Send(ShutdownMessage());
  }
}

bool ClusterState::WaitWorkersGone(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] {
    for (const RankRecord& r : ranks_) {
      if (r.alive && r.loaded) return false;
    }
    return true;
  });
}

v1::ClusterInfo ClusterState::ClusterInfo() const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::ClusterInfo info;
  info.set_world_size(world_size());
  info.set_serving(ServingLocked());
  info.set_placement_json(placement_json_);
  for (int rank = 0; rank < world_size(); ++rank) {
    const RankRecord& r = ranks_[rank];
    v1::RankInfo* ri = info.add_ranks();
    ri->set_rank(rank);
    ri->set_host(r.host);
    ri->set_device(r.device);
    ri->set_memory_bytes(r.memory_bytes);
    ri->set_weight_bytes(r.weight_bytes);
    for (int64_t e : setup_.plan.experts_on_rank(0, rank)) ri->add_experts_layer0(e);
    ri->set_loaded(r.loaded);
    ri->set_alive(r.alive && !r.silent);
    ri->set_kv_blocks_total(r.kv_blocks_total);
    ri->set_kv_block_size(r.kv_block_size);
    ri->set_max_batch_tokens(r.max_batch_tokens);
  }
  return info;
}

ClusterSnapshot ClusterState::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  ClusterSnapshot s;
  s.waiting = scheduler_.waiting() + held_;  // held ones wait for a worker job
  s.running = scheduler_.running();
  int64_t used = 0, total = 0;
  for (int rank = 0; rank < world_size(); ++rank) {
    const RankRecord& r = ranks_[rank];
    s.ranks.push_back({rank, r.running_sequences, r.kv_blocks_used, r.kv_blocks_total, r.prefix_cache_queried_tokens,
                       r.prefix_cache_hit_tokens, r.kv_blocks_cached, r.preemptions});
    if (r.loaded) {
      used += r.kv_blocks_used;
      total += r.kv_blocks_total;
    }
  }
  s.kv_cache_usage = total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0;
  s.load_stats_json = ranks_[0].load_stats_json;
  s.engine_steps = ranks_[0].steps;
  return s;
}

}  // namespace moe
