#include "benchmarks/activity_timeline.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "benchmarks/kernel_trace.h"

#ifdef MOE_WITH_CUPTI
#include <cuda_runtime.h>
#include <cupti.h>
#endif

namespace moe {

#ifdef MOE_WITH_CUPTI
namespace {

// CUPTI hands completed buffers to its own thread.
std::mutex g_mutex;
std::vector<ActivityRecord> g_records;

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                         CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME,
                                         CUPTI_ACTIVITY_KIND_DRIVER};

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  constexpr size_t kBytes = 8 << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBytes));
  *size = *buffer != nullptr ? kBytes : 0;
  *max_records = 0;  // as many as fit
}

const char* CopyName(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy DtoD";
    default: return "memcpy";
  }
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<ActivityRecord> got;
  CUpti_Activity* r = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    ActivityRecord a;
    switch (r->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
        a = {ActivityRecord::Kind::kKernel, ShortKernelName(k->name != nullptr ? k->name : "?"), k->streamId,
             k->start, k->end};
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
        a = {ActivityRecord::Kind::kMemcpy, CopyName(m->copyKind), m->streamId, m->start, m->end};
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
        a = {ActivityRecord::Kind::kMemset, "memset", m->streamId, m->start, m->end};
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        const auto* c = reinterpret_cast<const CUpti_ActivityAPI*>(r);
        const char* name = nullptr;
        const CUpti_CallbackDomain domain =
            r->kind == CUPTI_ACTIVITY_KIND_RUNTIME ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API;
        if (cuptiGetCallbackName(domain, c->cbid, &name) != CUPTI_SUCCESS || name == nullptr) name = "?";
        a = {ActivityRecord::Kind::kHostCall, name, 0, c->start, c->end};
        break;
      }
      default:
        continue;
    }
    got.push_back(std::move(a));
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_records.insert(g_records.end(), std::make_move_iterator(got.begin()), std::make_move_iterator(got.end()));
}

}  // namespace

bool ActivityTimeline::Available() { return true; }

bool ActivityTimeline::Start(std::string& error) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_records.clear();
  }
  auto fail = [&](const char* what, CUptiResult rc) {
    const char* s = nullptr;
    cuptiGetResultString(rc, &s);
    error = std::string(what) + ": " + (s != nullptr ? s : "unknown CUPTI error");
    for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
    return false;
  };
  if (CUptiResult rc = cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted); rc != CUPTI_SUCCESS) {
    return fail("cuptiActivityRegisterCallbacks", rc);
  }
  for (CUpti_ActivityKind k : kKinds) {
    if (CUptiResult rc = cuptiActivityEnable(k); rc != CUPTI_SUCCESS) return fail("cuptiActivityEnable", rc);
  }
  return true;
}

std::vector<ActivityRecord> ActivityTimeline::Stop() {
  cudaDeviceSynchronize();
  for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
  cuptiActivityFlushAll(1);
  std::vector<ActivityRecord> out;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    out.swap(g_records);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const ActivityRecord& a, const ActivityRecord& b) { return a.start_ns < b.start_ns; });
  return out;
}

#else

bool ActivityTimeline::Available() { return false; }
bool ActivityTimeline::Start(std::string& error) {
  error = "built without CUPTI";
  return false;
}
std::vector<ActivityRecord> ActivityTimeline::Stop() { return {}; }

#endif

namespace {

bool OnDevice(const ActivityRecord& r) { return r.kind != ActivityRecord::Kind::kHostCall; }

const char* KindName(ActivityRecord::Kind k) {
  switch (k) {
    case ActivityRecord::Kind::kKernel: return "kernel";
    case ActivityRecord::Kind::kMemcpy: return "memcpy";
    case ActivityRecord::Kind::kMemset: return "memset";
    case ActivityRecord::Kind::kHostCall: return "host";
  }
  return "?";
}

}  // namespace

nlohmann::json SummariseTimeline(const std::vector<ActivityRecord>& records, int largest_gaps) {
  std::vector<const ActivityRecord*> dev;
  for (const ActivityRecord& r : records) {
    if (OnDevice(r)) dev.push_back(&r);
  }
  if (dev.empty()) return {{"error", "no device records"}};
  // Sorted by start (Stop sorts): sweep the union of the device intervals.
  struct Gap {
    uint64_t start, end;
    const ActivityRecord *before, *after;
  };
  std::vector<Gap> gaps;
  const uint64_t t0 = dev.front()->start_ns;
  uint64_t covered_to = dev.front()->end_ns, busy = 0, seg_start = t0;
  const ActivityRecord* last_end = dev.front();
  for (size_t i = 1; i < dev.size(); ++i) {
    const ActivityRecord& r = *dev[i];
    if (r.start_ns > covered_to) {
      busy += covered_to - seg_start;
      gaps.push_back({covered_to, r.start_ns, last_end, &r});
      seg_start = r.start_ns;
    }
    if (r.end_ns > covered_to) {
      covered_to = r.end_ns;
      last_end = &r;
    }
  }
  busy += covered_to - seg_start;
  const uint64_t span = covered_to - t0;
  uint64_t idle = 0;
  for (const Gap& g : gaps) idle += g.end - g.start;

  std::sort(gaps.begin(), gaps.end(), [](const Gap& a, const Gap& b) { return a.end - a.start > b.end - b.start; });
  nlohmann::json top = nlohmann::json::array();
  for (size_t i = 0; i < gaps.size() && static_cast<int>(i) < largest_gaps; ++i) {
    const Gap& g = gaps[i];
    // The host calls that ran while the device idled (what it waited for or what it was issuing).
    std::map<std::string, double> host_us;
    for (const ActivityRecord& r : records) {
      if (r.kind != ActivityRecord::Kind::kHostCall || r.end_ns <= g.start || r.start_ns >= g.end) continue;
      host_us[r.name] += (std::min(r.end_ns, g.end) - std::max(r.start_ns, g.start)) / 1e3;
    }
    top.push_back({{"at_us", (g.start - t0) / 1e3},
                   {"us", (g.end - g.start) / 1e3},
                   {"after", g.before->name},
                   {"before", g.after->name},
                   {"host_calls_us", host_us}});
  }
  // Per kernel (or copy) name: count and summed durations (concurrent ones each count in full).
  std::map<std::string, std::pair<int64_t, uint64_t>> per_name;
  for (const ActivityRecord* r : dev) {
    auto& [n, ns] = per_name[r->name];
    ++n;
    ns += r->end_ns - r->start_ns;
  }
  std::vector<std::pair<std::string, std::pair<int64_t, uint64_t>>> by_time(per_name.begin(), per_name.end());
  std::sort(by_time.begin(), by_time.end(), [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  nlohmann::json names = nlohmann::json::array();
  for (const auto& [name, v] : by_time) names.push_back({{"name", name}, {"count", v.first}, {"us", v.second / 1e3}});
  return {{"span_us", span / 1e3},
          {"busy_us", busy / 1e3},
          {"idle_us", idle / 1e3},
          {"idle_stretches", gaps.size()},
          {"largest_idle", top},
          {"device_time_by_name", names}};
}

nlohmann::json TimelineRecords(const std::vector<ActivityRecord>& records) {
  nlohmann::json out = nlohmann::json::array();
  if (records.empty()) return out;
  uint64_t t0 = records.front().start_ns;
  for (const ActivityRecord& r : records) t0 = std::min(t0, r.start_ns);
  for (const ActivityRecord& r : records) {
    out.push_back({{"kind", KindName(r.kind)},
                   {"name", r.name},
                   {"stream", r.stream},
                   {"start_us", (r.start_ns - t0) / 1e3},
                   {"end_us", (r.end_ns - t0) / 1e3}});
  }
  return out;
}

}  // namespace moe
