// Kernel launches with programmatic dependent launch (PDL, Hopper): a kernel launched through
// Launch may start while the kernel before it on the stream is still finishing, and waits for it
// with PdlWait before it reads anything that kernel (or any earlier one) wrote. Static data (the
// weights) may be read before the wait: the skinny GEMM streams its first weight tiles while the
// previous kernel drains, which hides most of a launch's ramp-up in a decode step of hundreds of
// small kernels. Inside a CUDA graph the dependencies are captured as programmatic edges.
//
// The rule every kernel here follows: PdlWait() before the first read of data produced on the
// device, on every path (so the wait chain stays transitive: a kernel completes only after the one
// before it completed), then PdlTrigger() to let the next kernel launch.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda_check.h"
#include "kernels/kernels.h"

namespace moe::gpu {

__device__ __forceinline__ void PdlWait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
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
  MOE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace moe::gpu
