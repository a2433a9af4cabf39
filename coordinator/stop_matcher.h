// Stop sequences matched on streamed text.
//
// Text arrives in deltas (one per token or so) and a stop string may be split across several of
// them, so text is released only once it can no longer be part of a stop string: the longest
// suffix of the unreleased text that is a prefix of some stop string is held back. When a stop
// string completes, the text before it is released (with the stop string itself when asked, as
// vLLM's include_stop_str_in_output) and the rest is dropped.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moe {

class StopMatcher {
 public:
  // Empty strings are ignored (validation refuses them where requests enter).
  explicit StopMatcher(std::vector<std::string> stops, bool include_stop = false);

  struct Output {
    std::string text;      // safe to send now
    bool stopped = false;  // a stop string completed; nothing more will be released
  };

  // Adds a text delta. After a stop, further deltas are ignored. `may_stop` false (the text of
  // the first min_tokens tokens): no stop string may end in this delta, but one may start in it and
  // end in a later delta, as vLLM looks a stop string's length back from the new text; its
  // possible start is held back as any other.
  Output Push(std::string_view delta, bool may_stop = true);
  // End of the stream: releases the held-back text (nothing can complete a stop string any more).
  std::string Flush();

  bool stopped() const { return stopped_; }
  // The stop string that stopped it (empty before).
  const std::string& matched() const { return matched_; }

 private:
  // Length of the longest suffix of pending_ that is a proper prefix of some stop string.
  size_t HeldBackLength() const;

  std::vector<std::string> stops_;
  bool include_stop_;
  std::string pending_;  // received but not yet released
  size_t no_stop_end_ = 0;  // pending_'s first this many bytes came with may_stop false: no match ends there
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace moe
