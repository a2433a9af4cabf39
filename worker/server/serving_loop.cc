#include "worker/server/serving_loop.h"

#include <algorithm>
#include <cstdio>
#include <span>
#include <utility>
#include <vector>

#include "worker/sampler.h"

namespace moe {
namespace {

using moe::v1::Finished;

// The engine keys sequences by int64; the coordinator's uint64 ids map one to one.
int64_t EngineId(uint64_t seq_id) { return static_cast<int64_t>(seq_id); }

// One position's alternatives for the coordinator, most probable first, at most `limit` of them.
void AddAlternatives(const std::vector<TokenPick>& picks, size_t limit, moe::v1::TopAlternatives& out) {
  for (size_t i = 0; i < std::min(picks.size(), limit); ++i) {
    moe::v1::WorkerTopLogprob* w = out.add_alternatives();
    w->set_token_id(picks[i].token);
    w->set_logprob(picks[i].logprob);
  }
}

}  // namespace

ServingLoop::ServingLoop(StepEngine& engine, Inbox& inbox, Outbox& outbox, ServingLoopOptions opts)
    : engine_(engine),
      inbox_(inbox),
      outbox_(outbox),
      opts_(opts),
      planner_(engine.kv_blocks(), opts.kv_admission),
      last_heartbeat_(std::chrono::steady_clock::now()),  // (the first iteration heartbeats first thing)
      idle_wait_(opts.idle_wait_min) {}

moe::v1::WorkerStats ServingLoop::Stats() const {
  moe::v1::WorkerStats st;
  st.set_rank(engine_.comm().rank());
  st.set_running_sequences(num_sequences());
  st.set_kv_blocks_used(engine_.kv_blocks().used_blocks());
  st.set_kv_blocks_total(engine_.kv_blocks().total_blocks());
  st.set_prefix_cache_queried_tokens(engine_.kv_blocks().prefix_queried_tokens());
  st.set_prefix_cache_hit_tokens(engine_.kv_blocks().prefix_hit_tokens());
  st.set_kv_blocks_cached(engine_.kv_blocks().cached_free_blocks());
  st.set_steps(steps_);
  st.set_preemptions(preemptions_);
  st.set_load_stats_json(engine_.load_stats().ToJson().dump());
  return st;
}

void ServingLoop::SendHeartbeat() {
  moe::v1::WorkerMessage m;
  *m.mutable_heartbeat()->mutable_stats() = Stats();
  for (uint64_t h : engine_.TakeEvictedPrefixHashes()) m.mutable_heartbeat()->add_evicted_prefix_keys(h);
  outbox_.Send(std::move(m));
  last_heartbeat_ = std::chrono::steady_clock::now();
  finished_since_heartbeat_ = false;
}

void ServingLoop::Finish(uint64_t seq_id, Finished::Reason reason, const std::string& error) {
  moe::v1::WorkerMessage m;
  Finished* f = m.mutable_finished();
  f->set_seq_id(seq_id);
  f->set_reason(reason);
  if (!error.empty()) f->set_error(error);
  outbox_.Send(std::move(m));
  planner_.Remove(seq_id);
  engine_.FreeSequence(EngineId(seq_id));  // ignores sequences never admitted
  seqs_.erase(seq_id);
  finished_since_heartbeat_ = true;
}

void ServingLoop::OnAssign(const moe::v1::Assign& a) {
  const uint64_t id = a.seq_id();
  if (seqs_.count(id) != 0) {
    // Answering would end the sequence the coordinator already has under this id; a duplicate is
    // the coordinator's bug, so it is reported here and otherwise ignored.
    std::fprintf(stderr, "[rank %d] ignoring a second Assign for running sequence %llu\n", engine_.comm().rank(),
                 static_cast<unsigned long long>(id));
    return;
  }
  const ModelConfig& c = engine_.config();
  seqs_[id].assign = a;
  if (absl::Status s = ValidateAssign(a, c); !s.ok()) {
    Finish(id, Finished::REASON_ERROR, std::string(s.message()));
    return;
  }
  const int64_t worst = WorstCasePositions(a, c);
  if (!planner_.EverFits(worst)) {
    Finish(id, Finished::REASON_ERROR,
           absl::StrCat("the sequence needs ", planner_.BlocksFor(worst), " KV blocks (", worst,
                        " positions), this rank's cache holds ", engine_.kv_blocks().total_blocks()));
    return;
  }
  if (a.kind() == moe::v1::Assign::KIND_GENERATE && a.max_tokens() == 0) {
    Finish(id, Finished::REASON_LENGTH);
    return;
  }
  ServedSequence& s = seqs_[id];
  if (!s.is_score()) {
    s.sampling = SamplingOf(a);
    if (const PenaltyParams pen = PenaltiesOf(a); pen.any()) {
      s.penalties.emplace(pen, std::span<const int32_t>(a.prompt().data(), static_cast<size_t>(a.prompt_size())),
                          EndIds(a, c));
    }
    if (a.json_object() || !a.json_schema().empty() || a.choices_size() > 0 || !a.regex().empty() ||
        !a.grammar().empty()) {
      absl::StatusOr<SpecMasks> masks = MasksFor(a);
      if (!masks.ok()) {
        Finish(id, Finished::REASON_ERROR, std::string(masks.status().message()));
        return;
      }
      if (masks->gbnf != nullptr) {
        s.constraint = std::make_unique<GbnfConstraint>(*masks->gbnf, EndIds(a, c));
        s.constraint_masks = masks->gbnf;
      } else {
        s.constraint = std::make_unique<JsonConstraint>(*masks->json, EndIds(a, c));
        s.constraint_masks = masks->json;
      }
    }
  }
  // A generation resumed from a lost worker job: its tokens so far, then its context computed as
  // a preempted sequence's is (its step numbers go on from there, so a seed draws as before).
  for (const int32_t tok : a.resume_tokens()) s.Accept(tok);
  if (const std::optional<Finished::Reason> end = s.EndReason(c)) {
    Finish(id, *end);  // it had ended; only its Finished was lost
    return;
  }
  s.scored.set_seq_id(id);
  s.prompt_logprobs.set_seq_id(id);
  planner_.Enqueue(id, worst, s.context_size(), a.priority());
}

absl::StatusOr<ServingLoop::SpecMasks> ServingLoop::MasksFor(const moe::v1::Assign& a) {
  const char* field = a.json_object()        ? "json_object"
                      : a.choices_size() > 0 ? "choices"
                      : !a.regex().empty()   ? "regex"
                      : !a.grammar().empty() ? "grammar"
                                             : "json_schema";
  if (opts_.vocabulary == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": this rank has no vocabulary texts (the model has no tokenizer)"));
  }
  // Cache keys: "" for json_object, the schema's text (a JSON value: never starts with \x01 to
  // \x04), \x01 and the choices, each ended by \0, \x02 and the regex, \x04 and the grammar;
  // \x03 before either JSON key for its compact form.
  std::string key = a.json_object() ? std::string() : a.json_schema();
  if (!a.grammar().empty()) {
    key = "\x04" + a.grammar();
  } else if (a.choices_size() > 0) {
    key = "\x01";
    for (const std::string& c : a.choices()) key.append(c).push_back('\0');
  } else if (!a.regex().empty()) {
    key = "\x02" + a.regex();
  } else if (a.compact_json()) {
    key = "\x03" + key;  // the same schema without whitespace is another grammar
  }
  if (auto it = masks_.find(key); it != masks_.end()) return it->second;
  auto remember = [&](SpecMasks m) {
    if (masks_.size() >= kMaxSchemas) masks_.clear();  // running sequences keep theirs
    return masks_[key] = std::move(m);
  };
  if (!a.grammar().empty()) {
    absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(a.grammar());
    if (!g.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", g.status().message()));
    SpecMasks m;
    m.gbnf = std::make_shared<GbnfMaskCache>(opts_.vocabulary, std::make_shared<const GbnfGrammar>(*std::move(g)));
    return remember(std::move(m));
  }
  // (Choice's and Regex's errors name their field already.)
  absl::StatusOr<JsonSchema> schema = a.json_object()        ? absl::StatusOr<JsonSchema>(JsonSchema::AnyObject())
                                      : a.choices_size() > 0 ? JsonSchema::Choice({a.choices().begin(), a.choices().end()})
                                      : !a.regex().empty()   ? JsonSchema::Regex(a.regex())
                                                             : JsonSchema::CompileText(a.json_schema());
  if (!schema.ok()) {
    if (a.choices_size() > 0 || !a.regex().empty()) return schema.status();
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", schema.status().message()));
  }
  schema->set_compact(a.compact_json());
  SpecMasks m;
  m.json = std::make_shared<JsonMaskCache>(opts_.vocabulary, std::make_shared<const JsonSchema>(*std::move(schema)));
  return remember(std::move(m));
}

bool ServingLoop::PrefixBeingComputed(const ServedSequence& s, int64_t cached_blocks) const {
  const KvBlockAllocator& kv = engine_.kv_blocks();
  if (!kv.prefix_cache_enabled()) return false;
  // The block after the cached ones; it must be one AttachCachedPrefix could take (the prompt's
  // last token is always computed).
  const int64_t end = (cached_blocks + 1) * kv.block_size();
  if (end > s.prompt_size() - 1) return false;
  for (uint64_t id : planner_.running()) {
    const ServedSequence& r = seqs_.at(id);
    if (r.prompt_size() < end || r.fed >= end) continue;  // (scoring's filled blocks are cached too)
    if (r.assign.prefix_root() != s.assign.prefix_root()) continue;  // another salt's blocks are not its
    if (std::equal(s.assign.prompt().begin(), s.assign.prompt().begin() + end, r.assign.prompt().begin())) return true;
  }
  return false;
}

std::vector<int64_t> ServingLoop::PlanChunks() const {
  std::vector<int64_t> remaining;  // context tokens to hand over before it decodes; 0 once it does
  remaining.reserve(planner_.running().size());
  for (uint64_t id : planner_.running()) {
    const ServedSequence& s = seqs_.at(id);
    const int64_t whole = s.whole_rows_remaining();  // such chunks stop short of a prompt's last token
    remaining.push_back(s.decoding() ? 0 : whole > 0 ? whole : s.feed_remaining());
  }
  return PlanStepTokens(remaining, opts_.max_batch_tokens);
}

void ServingLoop::PreemptOne() {
  const uint64_t id = planner_.Victim();
  ServedSequence& s = seqs_.at(id);
  s.Restart();
  planner_.Preempt(id, s.context_size());
  engine_.FreeSequence(EngineId(id));
  ++preemptions_;
}

void ServingLoop::OnCancel(uint64_t seq_id) {
  if (seqs_.count(seq_id) == 0) return;  // unknown or already finished
  Finish(seq_id, Finished::REASON_CANCELLED);
}

void ServingLoop::HandleInbox() {
  // Read `closed` before draining: everything pushed before the close is then in the drain, so a
  // Shutdown followed by the end of the stream is never mistaken for a lost coordinator.
  const bool closed = inbox_.closed();
  for (moe::v1::CoordinatorMessage& msg : inbox_.Drain()) {
    switch (msg.kind_case()) {
      case moe::v1::CoordinatorMessage::kAssign:
        OnAssign(msg.assign());
        break;
      case moe::v1::CoordinatorMessage::kCancel:
        OnCancel(msg.cancel().seq_id());
        break;
      case moe::v1::CoordinatorMessage::kShutdown:
        got_shutdown_ = true;
        local_stop_ = std::max(local_stop_, StopReason::kShutdown);
        break;
      case moe::v1::CoordinatorMessage::KIND_NOT_SET:
        break;
    }
  }
  if (closed && !got_shutdown_) local_stop_ = StopReason::kCoordinatorLost;
}

std::optional<SampleNext> ServingLoop::EngineSamples(ServedSequence& s, bool last) {
  // Scoring wants whole rows. A generation's next token is the engine's pick, whatever it asks
  // for: its constraints go with the step (the ids they allow as a bit row, the penalties' changed
  // logits as entries), and so does the number of top alternatives.
  if (s.is_score()) return std::nullopt;
  SampleNext next{s.sampling, static_cast<uint64_t>(s.generated.size())};
  if (!last) return next;  // a chunk short of the context's end: its pick is not used
  if (s.constrained()) {
    TokenMask allowed(engine_.config().vocab_size);
    s.none_allowed = !s.NextAllowed(allowed);
    next.allowed.assign(allowed.words().begin(), allowed.words().end());
  }
  if (s.penalties) next.adjust = s.penalties->Adjustments();
  next.top_logprobs = s.assign.top_logprobs();
  return next;
}

void ServingLoop::OnGenerated(uint64_t seq_id, ServedSequence& s, const ChunkLogits& pick) {
  const moe::v1::Assign& a = s.assign;
  if (s.constraint && s.none_allowed) {  // the engine's pick under a mask that allowed nothing
    if (s.constraint->Complete()) {  // closed, and nothing may follow (ignore_eos)
      Finish(seq_id, Finished::REASON_STOP);
    } else {
      Finish(seq_id, Finished::REASON_ERROR,
             "response_format: no allowed token of the vocabulary continues the output (the vocabulary lacks "
             "its bytes, the request's stop token ids or bad words ban them, or the output reached the "
             "recogniser's limits: JSON nested 32 levels deep, or a grammar's 1,024 parses at once, 256 rules "
             "deep or 8,192 positions in all)");
    }
    return;
  }
  const int32_t tok = pick.token;
  moe::v1::WorkerMessage m;
  moe::v1::Tokens* t = m.mutable_tokens();
  t->set_seq_id(seq_id);
  t->add_token_ids(tok);
  t->add_logprobs(pick.token_logprob);
  if (s.generated.empty()) {
    t->set_cached_prompt_tokens(static_cast<uint32_t>(std::max<int64_t>(0, s.cached_prompt_tokens)));
    t->set_queued_seconds(s.queued_seconds);
  }
  if (a.top_logprobs() > 0) {
    AddAlternatives(pick.top, pick.top.size(), *t->add_top());
  }
  s.Accept(tok);
  outbox_.Send(std::move(m));
  // The same stopping rule as GenerateAll, plus stop token ids.
  if (const std::optional<Finished::Reason> end = s.EndReason(engine_.config())) Finish(seq_id, *end);
}

void ServingLoop::OnChunkDone(uint64_t seq_id, int64_t tokens, const ChunkLogits& out) {
  ServedSequence& s = seqs_.at(seq_id);
  const int64_t first = s.fed;
  s.fed += tokens;
  if (s.is_score()) {
    // Row r holds the prediction for prompt token first + r + 1; the engine scored it.
    MOE_CHECK(out.scores.size() == static_cast<size_t>(out.rows), "a scoring chunk came back without its scores");
    for (int64_t r = 0; r < out.rows && first + r + 1 < s.prompt_size(); ++r) {
      const RowScore& score = out.scores[static_cast<size_t>(r)];
      const int32_t next = s.assign.prompt(static_cast<int>(first + r + 1));
      s.scored.add_logprobs(score.logprob);
      if (s.assign.want_greedy()) {  // the argmax: the most probable token, ties to the lower id
        const TokenPick& argmax = score.top.at(0);
        s.scored.add_is_argmax(argmax.token == next);
        s.scored.add_argmax_ids(argmax.token);
        s.scored.add_argmax_logprobs(argmax.logprob);
      }
      if (s.assign.prompt_logprobs() > 0) {  // the top alternatives (ScoreRolling's top_logprobs)
        AddAlternatives(score.top, s.assign.prompt_logprobs(), *s.scored.add_top());
      }
    }
    if (s.feed_remaining() == 0) {
      moe::v1::WorkerMessage m;
      *m.mutable_scored() = std::move(s.scored);
      outbox_.Send(std::move(m));
      Finish(seq_id, Finished::REASON_LENGTH);
    }
    return;
  }
  if (out.rows > 0) {  // scored rows for the prompt's logprobs (never its last token's)
    MOE_CHECK(s.wants_prompt_logprobs(), "a generation's chunk returned logits instead of the engine's pick");
    AddPromptLogprobs(s, first, out);
    return;
  }
  if (s.feed_remaining() > 0) return;  // a chunk short of the context's end: its pick is not used
  OnGenerated(seq_id, s, out);
}

void ServingLoop::AddPromptLogprobs(ServedSequence& s, int64_t first, const ChunkLogits& out) {
  MOE_CHECK(out.scores.size() == static_cast<size_t>(out.rows), "a prompt's chunk came back without its scores");
  // Row r holds the prediction for prompt token first + r + 1; the engine scored it.
  for (int64_t r = 0; r < out.rows && first + r + 1 < s.prompt_size(); ++r) {
    const RowScore& score = out.scores[static_cast<size_t>(r)];
    s.prompt_logprobs.add_logprobs(score.logprob);
    s.prompt_logprobs.add_ranks(score.rank);
    if (s.assign.prompt_logprobs() == 0) continue;
    AddAlternatives(score.top, score.top.size(), *s.prompt_logprobs.add_top());
  }
  if (s.fed < s.prompt_size() - 1) return;
  moe::v1::WorkerMessage m;
  *m.mutable_prompt_logprobs() = std::move(s.prompt_logprobs);
  outbox_.Send(std::move(m));
  s.prompt_logprobs_sent = true;
}

void ServingLoop::StopAll() {
  std::vector<uint64_t> ids;
  for (const auto& [id, s] : seqs_) ids.push_back(id);
  for (uint64_t id : ids) {
    if (stop_ == StopReason::kShutdown) {
      Finish(id, Finished::REASON_CANCELLED);
    } else {
      planner_.Remove(id);
      engine_.FreeSequence(EngineId(id));
      seqs_.erase(id);
    }
  }
  stopped_ = true;
}

bool ServingLoop::RunOnce() {
  if (stopped_) return false;
  // The first heartbeat goes before the first step, not after it as the others do: the rank's
  // KeepAliveOutbox repeats the loop's last heartbeat while a step runs and has none before this
  // one, and a new worker job's first step may be a long prefill (the sequences a lost job left),
  // which must not count as silence (or as a stuck step before --step-timeout-s).
  if (++iterations_ == 1) SendHeartbeat();
  HandleInbox();

  std::vector<int64_t> stop = {static_cast<int64_t>(local_stop_)};
  engine_.comm().AllReduceMax(stop);
  if (stop[0] != 0) {
    stop_ = static_cast<StopReason>(stop[0]);
    StopAll();
    return false;
  }

  // Admission, oldest first. With prefix caching a generation's context (its prompt, and after a
  // preemption its generated tokens) may start with blocks computed before: it shares them (blocks
  // other sequences hold cost it nothing) and is fed from there. Scoring wants the logits of every
  // prompt position, so it computes them all.
  while (const std::optional<uint64_t> next = planner_.next_waiting()) {
    ServedSequence& s = seqs_.at(*next);
    // Scoring wants the rows of every prompt position, and so does a prompt's logprobs: computed whole.
    const bool whole = s.is_score() || s.wants_prompt_logprobs();
    std::vector<int32_t> resumed;  // a preempted generation's prompt + generated tokens (only the cache reads them)
    std::span<const int32_t> context(s.assign.prompt().data(), static_cast<size_t>(s.prompt_size()));
    if (!s.generated.empty() && engine_.kv_blocks().prefix_cache_enabled()) {
      resumed = s.ContextTokens(0, s.context_size());
      context = resumed;
    }
    const uint64_t root = s.assign.prefix_root();  // its cache_salt's chain (0: the unsalted one)
    const KvBlockAllocator::CachedPrefix cached =
        whole ? KvBlockAllocator::CachedPrefix{} : engine_.kv_blocks().LookupCachedPrefix(context, root);
    // The FIFO waits with it (at most a prefill).
    if (!whole && PrefixBeingComputed(s, cached.blocks)) break;
    if (!planner_.AdmitNext(cached.in_use)) {
      // On demand, a sequence of a higher priority (a lower value) takes the blocks of running ones
      // of a lower priority (as vLLM's priority policy); they wait behind it.
      if (planner_.mode() == KvAdmission::kOnDemand && !planner_.running().empty() &&
          planner_.priority(planner_.Victim()) > planner_.priority(*next)) {
        PreemptOne();
        continue;
      }
      break;
    }
    const absl::Status added = engine_.AddSequence(EngineId(*next));
    MOE_CHECK(added.ok(), added.ToString());  // ids are unique among live sequences
    // A whole prompt attaches nothing, but the blocks it fills join its root's chain all the same.
    s.fed = engine_.AttachCachedPrefix(EngineId(*next), whole ? std::span<const int32_t>() : context, root);
    if (s.cached_prompt_tokens < 0) {  // its first admission
      s.cached_prompt_tokens = s.fed;
      s.queued_seconds = s.assign.queued_seconds() +
                         std::chrono::duration<float>(std::chrono::steady_clock::now() - s.assigned_at).count();
    }
  }

  // This step's chunks, within the free KV blocks: on demand, the last in priority and admission
  // order make room.
  std::vector<int64_t> counts = PlanChunks();
  while (!planner_.running().empty() && planner_.StepBlocks(counts) > engine_.kv_blocks().free_blocks()) {
    PreemptOne();
    counts = PlanChunks();
  }
  const std::vector<uint64_t>& running = planner_.running();
  std::vector<SequenceChunk> chunks;
  std::vector<std::pair<uint64_t, int64_t>> owners;  // (seq id, tokens) per chunk
  for (size_t i = 0; i < running.size(); ++i) {
    if (counts[i] == 0) continue;
    ServedSequence& s = seqs_.at(running[i]);
    SequenceChunk& ch = chunks.emplace_back();
    ch.seq_id = EngineId(running[i]);
    ch.all_logits = s.whole_rows_remaining() > 0;
    if (ch.all_logits) {  // scored on the engine: each row's next prompt token
      ch.score = NextTokenTargets(std::span<const int32_t>(s.assign.prompt().data(), static_cast<size_t>(s.prompt_size())),
                                  s.fed, counts[i],
                                  s.is_score() ? std::max(s.assign.want_greedy() ? 1u : 0u, s.assign.prompt_logprobs())
                                               : s.assign.prompt_logprobs());
    } else {
      ch.sample_next = EngineSamples(s, counts[i] == s.feed_remaining());
    }
    ch.tokens = s.ContextTokens(s.fed, counts[i]);
    owners.emplace_back(running[i], counts[i]);
  }

  absl::StatusOr<StepOutput> step = engine_.Step(chunks);
  if (!step.ok()) {
    // ABORTED: another rank rejected its input; ours is untouched and goes again next iteration.
    // Anything else: this rank's input was refused (validation should have prevented that), so its
    // sequences of this step end with the error instead of failing every later step too.
    if (step.status().code() != absl::StatusCode::kAborted) {
      std::fprintf(stderr, "[rank %d] step failed: %s\n", engine_.comm().rank(), step.status().ToString().c_str());
      for (const auto& [id, n] : owners) Finish(id, Finished::REASON_ERROR, std::string(step.status().message()));
    }
  } else {
    if (step->global_rows > 0) ++steps_;
    for (size_t j = 0; j < owners.size(); ++j) OnChunkDone(owners[j].first, owners[j].second, step->chunks[j]);
  }

  if (finished_since_heartbeat_ || std::chrono::steady_clock::now() - last_heartbeat_ >= opts_.heartbeat_interval) {
    SendHeartbeat();
  }

  if (step.ok() && step->global_rows == 0) {
    inbox_.WaitFor(idle_wait_);
    idle_wait_ = std::min(idle_wait_ * 2, opts_.idle_wait_max);
  } else {
    idle_wait_ = opts_.idle_wait_min;
  }
  return true;
}

StopReason ServingLoop::Run() {
  while (RunOnce()) {
  }
  return stop_;
}

}  // namespace moe
