// An Outbox that keeps every message, in order, and sums them up per sequence: what tests of the
// serving loop assert against (and a handy sink for tools that run the loop without a coordinator).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "worker/server/outbox.h"

namespace moe {

class RecordingOutbox final : public Outbox {
 public:
  void Send(moe::v1::WorkerMessage msg) override {
    std::lock_guard<std::mutex> lock(mu_);
    messages_.push_back(std::move(msg));
  }
  std::vector<moe::v1::WorkerMessage> messages() const {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_;
  }

  // One sequence's results as they stand.
  struct Sequence {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<moe::v1::TopAlternatives> top;
    std::optional<moe::v1::Scored> scored;
    std::optional<moe::v1::PromptLogprobs> prompt_logprobs;
    int64_t prompt_logprobs_index = -1;  // index in messages() of its PromptLogprobs message
    std::optional<moe::v1::Finished> finished;
    int64_t first_token_index = -1;  // index in messages() of its first Tokens message
    int64_t finished_index = -1;     // index in messages() of its Finished message
  };
  std::map<uint64_t, Sequence> BySequence() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<uint64_t, Sequence> out;
    for (size_t i = 0; i < messages_.size(); ++i) {
      const moe::v1::WorkerMessage& m = messages_[i];
      if (m.has_tokens()) {
        Sequence& s = out[m.tokens().seq_id()];
        if (s.first_token_index < 0) s.first_token_index = static_cast<int64_t>(i);
        s.tokens.insert(s.tokens.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
        s.logprobs.insert(s.logprobs.end(), m.tokens().logprobs().begin(), m.tokens().logprobs().end());
        s.top.insert(s.top.end(), m.tokens().top().begin(), m.tokens().top().end());
      } else if (m.has_scored()) {
        out[m.scored().seq_id()].scored = m.scored();
      } else if (m.has_prompt_logprobs()) {
        Sequence& s = out[m.prompt_logprobs().seq_id()];
        s.prompt_logprobs = m.prompt_logprobs();
        s.prompt_logprobs_index = static_cast<int64_t>(i);
      } else if (m.has_finished()) {
        Sequence& s = out[m.finished().seq_id()];
        s.finished = m.finished();
        s.finished_index = static_cast<int64_t>(i);
      }
    }
    return out;
  }
  // The stats of the last Heartbeat (none yet: nullopt).
  std::optional<moe::v1::WorkerStats> LastStats() const {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = messages_.rbegin(); it != messages_.rend(); ++it) {
      if (it->has_heartbeat()) return it->heartbeat().stats();
    }
    return std::nullopt;
  }

 private:
  mutable std::mutex mu_;
  std::vector<moe::v1::WorkerMessage> messages_;
};

}  // namespace moe
