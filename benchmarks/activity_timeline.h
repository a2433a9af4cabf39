// The device and host timeline of a stretch of work, from CUPTI's activity records: every kernel,
// copy and memset the GPU ran (with its stream) and every CUDA runtime and driver call the host
// made, on one clock. moe-bench records one prefill with it: the prefill runs its experts on
// several streams and synchronises with the host once per layer, which the kernel trace
// (kernel_trace.h: one stream, our own kernels, graph replays) cannot see.
//
// Built when the toolkit has CUPTI (MOE_WITH_CUPTI); elsewhere Available() is false.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

struct ActivityRecord {
  enum class Kind { kKernel, kMemcpy, kMemset, kHostCall };
  Kind kind = Kind::kKernel;
  std::string name;     // kernel (demangled, short), copy direction, or API call
  uint32_t stream = 0;  // device records; 0 for host calls
  uint64_t start_ns = 0, end_ns = 0;
};

class ActivityTimeline {
 public:
  static bool Available();
  // Starts recording (one timeline at a time in a process). Returns false with `error` set when
  // CUPTI refuses (e.g. a sandboxed driver): the caller goes on without a timeline.
  bool Start(std::string& error);
  // Synchronises the device, stops recording and returns the records sorted by start.
  std::vector<ActivityRecord> Stop();
};

// A summary of device records: the span from the first device record's start to the last one's
// end, the time some device record was running (busy), the idle stretches between them (the
// largest few, each with what ended before it, what started after it and the host calls in it),
// and per kernel name the count and the summed durations.
nlohmann::json SummariseTimeline(const std::vector<ActivityRecord>& records, int largest_gaps = 12);

// Every record as JSON (times in microseconds from the first record), for offline analysis.
nlohmann::json TimelineRecords(const std::vector<ActivityRecord>& records);

}  // namespace moe
