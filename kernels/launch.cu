#include "kernels/launch.cuh"

#include <atomic>

namespace moe::gpu {
namespace {

std::atomic<bool> programmatic_launch{true};

}  // namespace

bool ProgrammaticLaunch() { return programmatic_launch.load(std::memory_order_relaxed); }
void SetProgrammaticLaunch(bool on) { programmatic_launch.store(on, std::memory_order_relaxed); }

}  // namespace moe::gpu
