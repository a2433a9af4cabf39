// One id's logit change before sampling: the value-changing penalties of worker/logits_penalties.h
// in their order (the logit bias, the repetition penalty, then the frequency and presence
// penalties), in float as there. One definition for the host (LogitsPenalties::Apply, the CPU
// engine's PickToken) and the GPU's sampling kernel, so both sample the same adjusted row.
#pragma once

#include <cstdint>

#include "common/uniform_draw.h"  // MOE_HOST_DEVICE

namespace moe {

struct LogitAdjustment {
  int32_t id = 0;
  float bias = 0.0f;        // added first (logit_bias)
  float repetition = 1.0f;  // then a negative logit times it, another divided by it (1: not a seen id)
  float frequency = 0.0f;   // then subtracted: frequency_penalty x the id's count in the output
  float presence = 0.0f;    // then subtracted: presence_penalty, for an id of the output
};
static_assert(sizeof(LogitAdjustment) == 5 * sizeof(int32_t));

// -inf stays -inf (the bias is finite, the repetition penalty finite and positive): a banned id
// stays banned whichever comes first.
MOE_HOST_DEVICE inline float Adjusted(float x, const LogitAdjustment& a) {
  if (a.bias != 0.0f) x += a.bias;
  if (a.repetition != 1.0f) x = x < 0.0f ? x * a.repetition : x / a.repetition;
  x -= a.frequency;  // two steps, in float, as vLLM's
  x -= a.presence;
  return x;
}

}  // namespace moe
