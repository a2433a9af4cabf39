// The Responses API's stored responses (store: true, OpenAI's default): each response object with
// the conversation it ends (its input and its output as the assistant's turn), so a later request
// naming it as previous_response_id goes on from there, and GET / DELETE /v1/responses/{id} find
// it. Kept in memory, the least recently used dropped past `capacity` (vLLM keeps every one,
// which its documentation calls a leak); nothing survives a restart.
#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

namespace moe::openai {

struct StoredResponse {
  nlohmann::ordered_json response;      // the response object as it was answered
  nlohmann::ordered_json conversation;  // chat messages: the input (instructions excluded) and the output
  nlohmann::ordered_json input_items;   // the request's input as the API lists it (ResponsesCall::input_items)
};

class ResponseStore {
 public:
  explicit ResponseStore(size_t capacity) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }

  void Put(const std::string& id, StoredResponse stored) {
    if (capacity_ == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (auto found = index_.find(id); found != index_.end()) {
      order_.erase(found->second);
      index_.erase(found);
    }
    order_.emplace_front(id, std::move(stored));
    index_[id] = order_.begin();
    while (order_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
  }

  // A copy (the entry may be dropped meanwhile); a found entry becomes the most recently used.
  std::optional<StoredResponse> Get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = index_.find(id);
    if (found == index_.end()) return std::nullopt;
    order_.splice(order_.begin(), order_, found->second);
    return found->second->second;
  }

  bool Erase(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = index_.find(id);
    if (found == index_.end()) return false;
    order_.erase(found->second);
    index_.erase(found);
    return true;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return order_.size();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::list<std::pair<std::string, StoredResponse>> order_;  // most recently used first
  std::unordered_map<std::string, std::list<std::pair<std::string, StoredResponse>>::iterator> index_;
};

}  // namespace moe::openai
