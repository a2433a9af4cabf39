// The kernel timeline of decode steps (kernels.h: KernelTrace, measurement builds only), summed
// per kernel of a layer: each kernel's share of the critical path is the time from its record (it
// passed its wait for the kernel before it) to the next kernel's record in time (launches on several
// streams can pass their waits out of launch order; cuBLAS's own kernels leave no record, so their
// time goes to the traced kernel before them). Steps are CUDA graph
// replays (or, for steps run without a graph, their launches step by step), so this is the time the
// default decode path spends, programmatic launch included.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/kernels.h"

namespace moe {

// A kernel's name as a reader wants it: "moe::gpu::(anonymous namespace)::SkinnyGemmKernel<1, 3,
// true>(...)" (mangled or not) -> "SkinnyGemmKernel<1, 3, true>".
std::string ShortKernelName(const std::string& name);

// t: a trace of `steps` identical steps (one graph), each an embedding kernel, `layers` layers of
// the same kernel sequence, and a tail. Returns per-layer kernels (name, us per layer), the kernels
// outside the layers (us per step), and the step's span from its first record to its last; or an
// "error" entry when the trace does not have that shape. Steps run without a graph note their
// launches every step: then the steps of the most common launch sequence are summarised, and
// "steps_left_out" counts the others. Where layers launch different kernels (the experts' launches
// follow the routing), each step is split where its first layer's first kernel comes again: the
// per-kernel means of all layers but the last ("layers_averaged"), which goes with the tail.
nlohmann::json SummariseDecodeTrace(const gpu::KernelTrace& t, int64_t layers, int steps);

// The trace's phase marks (launch.cuh: TraceMark), each against the kernel whose record comes last
// before it (the kernel it was taken in, when taken after that kernel's wait): per (kernel, mark id)
// the mean time from the kernel's record, us, and how many marks. A kernel that appears several
// times a layer (the residual kernels) has its marks averaged over its appearances.
nlohmann::json SummariseTraceMarks(const gpu::KernelTrace& t);

}  // namespace moe
