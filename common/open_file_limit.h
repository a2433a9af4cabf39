// Servers hold a file descriptor per connection (and the OpenAI front one more per request while
// it waits on the cluster); Linux's usual soft limit of 1,024 open files would refuse connections
// long before the 1,024 requests moe-openai-server serves at once. As vLLM's server does at start,
// the soft limit is raised towards the hard one.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cstdint>

namespace moe {

// Raises the soft RLIMIT_NOFILE to `want` (at most the hard limit); never lowers it. Returns the
// soft limit in force afterwards.
inline uint64_t RaiseOpenFileLimit(uint64_t want = 65536) {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  const rlim_t target = std::min<rlim_t>(static_cast<rlim_t>(want), r.rlim_max);
  if (r.rlim_cur < target) {
    rlimit raised = r;
    raised.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) r = raised;
  }
  return static_cast<uint64_t>(r.rlim_cur);
}

}  // namespace moe
