// Kernel-level figures for moe-bench, at the shapes of one model config: the device's copy
// bandwidth (the ceiling every decode figure is compared with), and the expert GEMMs at decode
// row counts through the skinny kernel and through cuBLAS, as bandwidth over the weight bytes.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/model/config.h"

namespace moe {

// A top-k routing of `tokens` tokens over E experts, each token's k experts distinct and drawn
// uniformly: the tokens routed to each expert, in token order.
std::vector<std::vector<int32_t>> DrawTopK(int64_t tokens, int64_t E, int64_t k, std::mt19937& rng);

// Allocates a few GB of scratch on the current device (freed before it returns).
nlohmann::json KernelFigures(const ModelConfig& c);

// cuBLASLt's candidate algorithms (up to 16) for the prefill products (the experts' two matrices
// at 64-256 rows, the attention projections at 512), each timed alone and, for the experts, as all
// experts at once on concurrent streams (blas_candidates.cc).
nlohmann::json BlasCandidateFigures(const ModelConfig& c);

// The experts' skinny GEMMs of a decode step (a layer's experts, top-k routing, only experts with
// rows launched) and the dense products at one row, for every split count (skinny_splits.cc).
nlohmann::json SkinnySplitFigures(const ModelConfig& c);

// The grouped wgmma kernel on a layer's experts at prefill row counts, even and drawn routings
// (grouped_gemm_figures.cc); empty where the device does not run it.
nlohmann::json GroupedGemmFigures(const ModelConfig& c);

// The experts of one expert-parallel rank (rank 0 of 2 and of 4) in decode steps of 64-512 tokens
// over the job: cuBLAS after the counts' trip to the host, the grouped wgmma kernel and the skinny
// kernel, the three ways the device exchange can run them (ep_rank_experts.cc).
nlohmann::json EpRankExpertFigures(const ModelConfig& c);

}  // namespace moe
