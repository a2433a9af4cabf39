#include "kernels/launch.cuh"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>

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
  MOE_CUDA_CHECK(cudaMalloc(&s.buffer, sizeof(unsigned long long) * (capacity + 2)));
  MOE_CUDA_CHECK(cudaMalloc(&s.marks, sizeof(unsigned long long) * (2 * capacity + 2)));
  const unsigned long long head[2] = {0, capacity};
  MOE_CUDA_CHECK(cudaMemcpy(s.buffer, head, sizeof head, cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(s.marks, head, sizeof head, cudaMemcpyHostToDevice));
  for (auto set : s.setters) set(s.buffer, s.marks);
  s.names.clear();
}

KernelTrace StopKernelTrace() {
  TraceState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.buffer == nullptr) throw std::logic_error("StopKernelTrace: no trace is running");
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto set : s.setters) set(nullptr, nullptr);
  unsigned long long head[2];
  MOE_CUDA_CHECK(cudaMemcpy(head, s.buffer, sizeof head, cudaMemcpyDeviceToHost));
  KernelTrace t;
  const unsigned long long n = std::min(head[0], head[1]);
  t.dropped = head[0] - n;
  t.times_ns.resize(n);
  if (n > 0) MOE_CUDA_CHECK(cudaMemcpy(t.times_ns.data(), s.buffer + 2, sizeof(uint64_t) * n, cudaMemcpyDeviceToHost));
  MOE_CUDA_CHECK(cudaMemcpy(head, s.marks, sizeof head, cudaMemcpyDeviceToHost));
  const unsigned long long m = std::min(head[0], head[1]);
  t.marks_dropped = head[0] - m;
  std::vector<unsigned long long> pairs(2 * m);
  if (m > 0) MOE_CUDA_CHECK(cudaMemcpy(pairs.data(), s.marks + 2, sizeof(uint64_t) * 2 * m, cudaMemcpyDeviceToHost));
  for (unsigned long long i = 0; i < m; ++i) t.marks.push_back({static_cast<int>(pairs[2 * i]), pairs[2 * i + 1]});
  MOE_CUDA_CHECK(cudaFree(s.buffer));
  MOE_CUDA_CHECK(cudaFree(s.marks));
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
