// Kernel launches with programmatic dependent launch (PDL, Hopper): a kernel launched through
// Launch may start while the kernel before it on the stream is still finishing, and waits for it
// with PdlWait before it reads anything that kernel (or any earlier one) wrote. Static data (the
// weights) may be read before the wait: the skinny GEMM streams its first weight tiles while the
// previous kernel drains, which hides most of a launch's ramp-up in a decode step of hundreds of
// small kernels. Inside a CUDA graph the dependencies are captured as programmatic edges.
//
// The rule every kernel here follows: PdlWait() before the first read of data produced on the
// device, on every path (so the wait chain stays transitive: a kernel completes only after the one
// before it completed), then PdlTrigger() to let the next kernel launch. Before the wait a kernel
// may read static data (weights) and a step's inputs copied from the host before its first kernel
// (positions, block tables, attention tiles: the decode attention and RoPE kernels do their
// address arithmetic there). More generally it may read whatever was written before the kernel
// ahead of it started: since that kernel waited before it triggered this launch, the one before it
// has completed (the keys of earlier steps in the attention, a MoE layer's routing and residual in
// its combine); such loads go through L2 (cp.async.cg, __ldcg), not a possibly stale L1.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda_check.h"
#include "kernels/kernels.h"

namespace moe::gpu {

#ifdef MOE_KERNEL_TRACE
// Kernel timeline (measurement builds only, -DMOE_KERNEL_TRACE=ON): thread 0 of block 0 of every
// kernel records the global timer as it passes PdlWait, that is when the kernel before it has
// completed. The gaps between consecutive records are each kernel's share of the step's critical
// path, captured graphs and programmatic launch included (kernels.h: StartKernelTrace).
// TraceMark(id) adds a phase mark inside a kernel: (id, global timer) as thread 0 of block 0
// passes it. Without relocatable device code each translation unit has its own copy of the buffer
// pointers; every copy registers a setter here at static initialisation.
namespace trace_detail {
static __device__ unsigned long long* g_trace = nullptr;  // [0] next, [1] capacity, [2..] times
static __device__ unsigned long long* g_marks = nullptr;  // [0] next, [1] capacity, [2..] (id, time) pairs
void RegisterSetter(void (*set)(unsigned long long* times, unsigned long long* marks));
static void SetThisUnit(unsigned long long* times, unsigned long long* marks) {
  MOE_CUDA_CHECK(cudaMemcpyToSymbol(g_trace, &times, sizeof times));
  MOE_CUDA_CHECK(cudaMemcpyToSymbol(g_marks, &marks, sizeof marks));
}
[[maybe_unused]] static const bool registered = (RegisterSetter(&SetThisUnit), true);
}  // namespace trace_detail
void NoteTracedLaunch(const void* kernel);  // host: the kernel's name, in launch order
#endif

__device__ __forceinline__ void PdlWait() {
#ifdef MOE_KERNEL_TRACE
  unsigned long long* trace = trace_detail::g_trace;  // loaded before the wait, behind it
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (trace != nullptr && threadIdx.x == 0 && threadIdx.y == 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
      blockIdx.z == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    const unsigned long long i = atomicAdd(trace, 1ull);
    if (i < trace[1]) trace[2 + i] = t;
  }
#else
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// A phase mark of a kernel (measurement builds; nothing elsewhere): kernels.h, KernelTrace::marks.
__device__ __forceinline__ void TraceMark(int id) {
#ifdef MOE_KERNEL_TRACE
  unsigned long long* marks = trace_detail::g_marks;
  if (marks != nullptr && threadIdx.x == 0 && threadIdx.y == 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
      blockIdx.z == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    const unsigned long long i = atomicAdd(marks, 1ull);
    if (i < marks[1]) {
      marks[2 + 2 * i] = static_cast<unsigned long long>(id);
      marks[3 + 2 * i] = t;
    }
  }
#else
  (void)id;
#endif
}
__device__ __forceinline__ void PdlTrigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
// Both, at the top of a kernel that reads produced data from the start.
__device__ __forceinline__ void PdlGate() {
  PdlWait();
  PdlTrigger();
}

template <typename... KernelArgs, typename... Args>
void Launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared, cudaStream_t s, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = shared;
  cfg.stream = s;
  cfg.attrs = &attr;
  cfg.numAttrs = ProgrammaticLaunch() ? 1 : 0;
#ifdef MOE_KERNEL_TRACE
  NoteTracedLaunch(reinterpret_cast<const void*>(kernel));
#endif
  MOE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace moe::gpu
