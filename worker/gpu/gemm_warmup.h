// The cuBLASLt algorithms of a rank's products, chosen at load instead of by the first requests.
//
// A new (shape, row bucket) key costs a heuristic query and, from 64 rows, the timing of the
// candidates with a host synchronisation: about 2.5 ms a key at Mixtral-8x7B shape on an H200,
// paid by whichever step first meets the key (a 512-token prefill met four new ones in its second
// run: 45 against 34 ms). PrepareGemmAlgorithms makes every choice the engine's steps can need up
// to its largest step, on scratch rows and the rank's real weights (a choice depends on the shapes,
// not the values), so that serving starts with them all made (Gemm shares them process-wide).
#pragma once

#include <cstdint>

#include "worker/gpu/device_weights.h"
#include "worker/gpu/gemm.h"
#include "worker/model/config.h"

namespace moe::gpu {

// The products and their rows, as the engine runs them (gpu_engine.cc, moe_layer.cc):
//   QKV          Linear,    up to max_step_tokens rows (above the dense skinny limit)
//   O            LinearF32 accumulating into the residual, the same rows
//   router       LinearF32, the same rows
//   LM head      LinearF32, up to min(max_step_tokens, 512) rows (more: chosen on first use)
//   w13, w2      LinearBlas per expert, up to max_step_tokens x experts_per_token rows; and
//                LinearBatched over all E experts (the padded experts), up to
//                min(max_step_tokens, padded_max_tokens) rows each (0: none)
// Allocates its scratch rows for the call (a few hundred MB at Mixtral-8x7B shape) and frees them.
// Returns the number of algorithms it chose, or -1 when the scratch rows did not fit (the choices
// are then made on first use, as without it).
int64_t PrepareGemmAlgorithms(const ModelConfig& c, const DeviceWeights& w, int64_t max_step_tokens,
                              int64_t padded_max_tokens, Gemm& gemm);

}  // namespace moe::gpu
