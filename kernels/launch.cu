#include "kernels/launch.cuh"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace moe::gpu {
namespace {

std::atomic<bool> programmatic_launch{true};

#ifdef MOE_KERNEL_TRACE
struct TraceState {
  std::mutex mu;
  std::vector<void (*)(unsigned long long*, unsigned long long*)> setters;  // one per unit with kernels
  unsigned long long* buffer = nullptr;  // device: [0] next, [1] capacity, [2..] times
  unsigned long long* marks = nullptr;   // device: [0] next, [1] capacity, [2..] (id, time) pairs
  std::vector<std::string> names;
};
TraceState& State() {
  static TraceState* s = new TraceState;  // used from static initialisers of other units
  return *s;
}

// A device record buffer: [0] next record, [1] capacity, then `capacity` records of `words` words.
unsigned long long* NewRecords(size_t capacity, size_t words) {
  unsigned long long* b = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&b, sizeof(unsigned long long) * (words * capacity + 2)));
  const unsigned long long head[2] = {0, capacity};
  MOE_CUDA_CHECK(cudaMemcpy(b, head, sizeof head, cudaMemcpyHostToDevice));
  return b;
}

// The records taken (their words, in order), how many did not fit in `dropped`; frees the buffer.
std::vector<unsigned long long> TakeRecords(unsigned long long* b, size_t words, uint64_t& dropped) {
  unsigned long long head[2];
  MOE_CUDA_CHECK(cudaMemcpy(head, b, sizeof head, cudaMemcpyDeviceToHost));
  const unsigned long long n = std::min(head[0], head[1]);
  dropped = head[0] - n;
  std::vector<unsigned long long> out(words * n);
  if (n > 0) MOE_CUDA_CHECK(cudaMemcpy(out.data(), b + 2, sizeof(unsigned long long) * out.size(), cudaMemcpyDeviceToHost));
  MOE_CUDA_CHECK(cudaFree(b));
  return out;
}
#endif

}  // namespace

#ifdef MOE_KERNEL_TRACE
namespace trace_detail {
void RegisterSetter(void (*set)(unsigned long long*, unsigned long long*)) {
  TraceState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  s.setters.push_back(set);
}
}  // namespace trace_detail

void NoteTracedLaunch(const void* kernel) {
  TraceState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.buffer == nullptr) return;
  const char* name = nullptr;
  s.names.emplace_back(cudaFuncGetName(&name, kernel) == cudaSuccess && name != nullptr ? name : "?");
}

bool KernelTraceAvailable() { return true; }

void StartKernelTrace(size_t capacity) {
  TraceState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.buffer != nullptr) throw std::logic_error("StartKernelTrace: a trace is running");
  s.buffer = NewRecords(capacity, 1);
  s.marks = NewRecords(capacity, 2);
  for (auto set : s.setters) set(s.buffer, s.marks);
  s.names.clear();
}

KernelTrace StopKernelTrace() {
  TraceState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.buffer == nullptr) throw std::logic_error("StopKernelTrace: no trace is running");
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto set : s.setters) set(nullptr, nullptr);
  KernelTrace t;
  const std::vector<unsigned long long> times = TakeRecords(s.buffer, 1, t.dropped);
  t.times_ns.assign(times.begin(), times.end());
  const std::vector<unsigned long long> marks = TakeRecords(s.marks, 2, t.marks_dropped);
  for (size_t i = 0; i + 1 < marks.size(); i += 2) t.marks.push_back({static_cast<int>(marks[i]), marks[i + 1]});
  s.buffer = nullptr;
  s.marks = nullptr;
  t.names = std::move(s.names);
  s.names.clear();
  return t;
}
#else
bool KernelTraceAvailable() { return false; }
void StartKernelTrace(size_t) { throw std::logic_error("kernel trace: build with -DMOE_KERNEL_TRACE=ON"); }
KernelTrace StopKernelTrace() { throw std::logic_error("kernel trace: build with -DMOE_KERNEL_TRACE=ON"); }
#endif

bool ProgrammaticLaunch() { return programmatic_launch.load(std::memory_order_relaxed); }
void SetProgrammaticLaunch(bool on) { programmatic_launch.store(on, std::memory_order_relaxed); }

}  // namespace moe::gpu
