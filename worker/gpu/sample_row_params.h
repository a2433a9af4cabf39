// A request's sampling parameters at a step, as the sampling kernel reads them (kernels.h:
// SampleRowParams, 32-bit words that travel in a step's int32 input buffer).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"
#include "worker/sampler.h"

namespace moe::gpu {

// `allowed_row`: the row of the step's allowed-id bits this row draws under, `adjusted_row` the row
// of its penalised copy it draws from; -1 for none. `top_n`: the top alternatives it also returns;
// `target`: the id whose log-probability and rank it also returns (-1: none).
inline SampleRowParams ToSampleRowParams(const SamplingParams& p, uint64_t step, int32_t allowed_row = -1,
                                         int32_t adjusted_row = -1, int32_t top_n = 0, int32_t target = -1) {
  return SampleRowParams{p.temperature,
                         p.top_k,
                         p.top_p,
                         static_cast<uint32_t>(p.seed),
                         static_cast<uint32_t>(p.seed >> 32),
                         static_cast<uint32_t>(step),
                         static_cast<uint32_t>(step >> 32),
                         allowed_row,
                         p.min_p,
                         adjusted_row,
                         top_n,
                         target};
}

}  // namespace moe::gpu
