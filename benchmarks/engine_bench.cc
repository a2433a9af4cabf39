// moe-bench: the single-GPU engine on a model config with synthetic bf16 weights (no checkpoint
// needed; default: Mixtral-8x7B). Measures
//   - kernel figures first (kernel_bench.h): the copy bandwidth, and the expert GEMMs at decode row
//     counts through the skinny kernel and cuBLAS;
//   - prefill of 1 x N tokens (default 512), ms (median of a few runs after a warm-up run), with the
//     experts as cuBLAS grouped GEMMs (the default) and as one cuBLAS GEMM per expert;
//   - decode throughput at batch 1, 16, 64, 256 with 128-token contexts: the contexts are
//     prefilled first, then a few warm-up decode steps, then timed steps (wall clock around
//     Step, which returns after the device has finished and the greedy picks are on the host, as
//     moe-worker asks for them); then the same sequences again without CUDA graphs, with the experts
//     through cuBLAS, ..., with the logits rows copied to the host instead, and sampled with
//     temperature, top-k and top-p on the device, for comparison;
//   - in a profiling mode (CUDA events at the stage boundaries of every layer; no graphs), the
//     per-layer time split: attention, router, dispatch, experts, combine (and what lies outside
//     the layers);
//   - with --timeline-out (builds with CUPTI), the activity timeline of one prefill and of decode
//     steps (activity_timeline.h): every kernel on every stream, every copy and CUDA call; the
//     device's idle stretches are summarised in the JSON, the records go to the file;
// and writes one JSON object (machine, commit, command line, config, every figure) to --out.
//
// The byte floor, for comparing later versions: a decode step must read every weight it uses
// once. Per step that is the replicated weights (attention, router and norms of every layer, the
// LM head; the embedding rows are negligible) plus, per layer, the experts the batch touches. With
// B tokens routed top-k of E independently, E (1 - (1 - k/E)^B) distinct experts are touched per
// layer on average. Mixtral-8x7B: replicated ~2.9 GB; one expert of one layer 352 MB, so batch 1
// reads ~25.4 GB (2 experts per layer) and batch >= 16 nearly all 93.4 GB. The JSON reports the
// floor per batch (bytes, and ms at the copy bandwidth measured in the same run) beside the
// measured time.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "benchmarks/activity_timeline.h"
#include "benchmarks/engine_driver.h"
#include "benchmarks/kernel_bench.h"
#include "benchmarks/kernel_trace.h"
#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/gpu/gpu_engine.h"
#include "worker/kv_budget.h"

namespace moe {
namespace {

// The kernel figures (kernel_bench.h): basic (copy bandwidth, the expert and dense products),
// cuBLAS's candidates, the skinny split counts, the grouped wgmma kernel, one expert-parallel
// rank's experts.
constexpr const char* kKernelFigures[] = {"basic", "blas_candidates", "skinny_splits", "grouped_wgmma",
                                          "ep_rank_experts"};

struct Args {
  std::string config = std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/mixtral-8x7b-v0.1.json";
  std::string out = "moe-bench.json";
  std::string commit;
  uint64_t seed = 1;
  int64_t prefill_tokens = 512;
  int prefill_runs = 9;
  std::vector<int64_t> batches = {1, 16, 64, 256};
  int64_t context = 128;
  int warmup = 3;
  int steps = 16;
  std::vector<int64_t> profile_batches = {1, 64};
  std::vector<int64_t> trace_batches = {1, 64};  // kernel timelines (measurement builds only)
  bool variants = true;   // decode and prefill also without graphs / with cuBLAS experts
  bool kernels = true;    // kernel figures
  bool kernels_only = false;  // the kernel figures and nothing else (no engine: quick, and for profilers)
  // --kernel-figures LIST: which kernel figures (default all of kKernelFigures).
  std::vector<std::string> kernel_figures{std::begin(kKernelFigures), std::end(kKernelFigures)};
  std::string timeline_out;   // CUPTI timelines of one prefill and a decode step per timeline batch
  std::vector<int64_t> timeline_batches = {64};
  int64_t prefill_chunk = 2048;  // tokens per step when prefilling the decode contexts
  int64_t padded_max_tokens = -1;  // --padded-max-tokens N: ExpertGemmTuning's (-1: its default)
  std::vector<int64_t> skinny_splits = {0, 0};  // --skinny-splits UP,DOWN: the skinny experts' (0: the model's)
  bool wgmma = false;            // --experts wgmma[-SHAPE]: the grouped wgmma kernel above the skinny limit
  gpu::GroupedTile wgmma_tile = gpu::GroupedTile::kAuto;
};

void Usage() {
  std::fprintf(stderr,
               "usage: moe-bench [--config FILE] [--out FILE] [--commit SHA] [--seed N] [--prefill-tokens N] [--prefill-runs 9]\n"
               "                 [--batches 1,16,64,256] [--context N] [--warmup N] [--steps N]\n"
               "                 [--profile-batches 1,64 (0: no profiling)] [--trace-batches 1,64 (0: none)]\n"
               "                 [--no-variants] [--no-kernels | --kernels-only] [--experts cublas|wgmma[-SHAPE]]\n"
               "                 [--kernel-figures basic,blas_candidates,skinny_splits,grouped_wgmma,ep_rank_experts]\n"
               "                 [--padded-max-tokens N (experts padded to the step's tokens up to N; 0: never)]\n"
               "                 [--skinny-splits UP,DOWN (the skinny experts' split-K counts; 0: the model's)]\n"
               "                 [--timeline-out FILE [--timeline-batches 64]] (CUPTI builds: every kernel, copy and\n"
               "                 CUDA call of one prefill and of decode steps, summarised in --out, records in FILE)\n"
               "The commit defaults to $MOE_COMMIT.\n");
}

// --experts cublas | wgmma | wgmma-128x128 | wgmma-128x256 | wgmma-192x128 | wgmma-tma-128x128 |
// wgmma-tma-128x256 | wgmma-tma-256x128.
bool ExpertsChoice(const std::string& v, Args& a) {
  static const std::pair<const char*, gpu::GroupedTile> kShapes[] = {
      {"wgmma", gpu::GroupedTile::kAuto},
      {"wgmma-128x128", gpu::GroupedTile::k128x128},
      {"wgmma-128x256", gpu::GroupedTile::k128x256},
      {"wgmma-192x128", gpu::GroupedTile::k192x128},
      {"wgmma-tma-128x128", gpu::GroupedTile::kTma128x128},
      {"wgmma-tma-128x256", gpu::GroupedTile::kTma128x256},
      {"wgmma-tma-256x128", gpu::GroupedTile::kTma256x128}};
  if (v == "cublas") {
    a.wgmma = false;
    return true;
  }
  for (const auto& [name, tile] : kShapes) {
    if (v == name) {
      a.wgmma = true;
      a.wgmma_tile = tile;
      return true;
    }
  }
  return false;
}

bool ParseArgs(int argc, char** argv, Args& a) {
  if (const char* c = std::getenv("MOE_COMMIT")) a.commit = c;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (k == "--help" || k == "-h") return false;
    if (k == "--no-variants") {
      a.variants = false;
      continue;
    }
    if (k == "--no-kernels") {
      a.kernels = false;
      continue;
    }
    if (k == "--kernels-only") {
      a.kernels_only = true;
      continue;
    }
    if (!(v = value())) {
      std::fprintf(stderr, "moe-bench: %s needs a value\n", k.c_str());
      return false;
    }
    if (k == "--config") a.config = v;
    else if (k == "--out") a.out = v;
    else if (k == "--commit") a.commit = v;
    else if (k == "--seed") a.seed = std::strtoull(v, nullptr, 10);
    else if (k == "--prefill-tokens") a.prefill_tokens = std::atoll(v);
    else if (k == "--prefill-runs") a.prefill_runs = std::atoi(v);
    else if (k == "--context") a.context = std::atoll(v);
    else if (k == "--warmup") a.warmup = std::atoi(v);
    else if (k == "--steps") a.steps = std::atoi(v);
    else if (k == "--batches") a.batches = ParseList(v);
    else if (k == "--profile-batches") a.profile_batches = ParseList(v);
    else if (k == "--trace-batches") a.trace_batches = ParseList(v);
    else if (k == "--timeline-out") a.timeline_out = v;
    else if (k == "--timeline-batches") a.timeline_batches = ParseList(v);
    else if (k == "--experts" && ExpertsChoice(v, a)) continue;
    else if (k == "--kernel-figures") {
      a.kernel_figures.clear();
      for (std::string rest = v; !rest.empty();) {
        const size_t comma = rest.find(',');
        a.kernel_figures.push_back(rest.substr(0, comma));
        rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
      }
      for (const std::string& f : a.kernel_figures) {
        if (std::find(std::begin(kKernelFigures), std::end(kKernelFigures), f) == std::end(kKernelFigures)) {
          std::fprintf(stderr, "moe-bench: --kernel-figures: unknown figure %s\n", f.c_str());
          return false;
        }
      }
    }
    else if (k == "--padded-max-tokens") {
      a.padded_max_tokens = std::atoll(v);
      if (a.padded_max_tokens < 0) {
        std::fprintf(stderr, "moe-bench: --padded-max-tokens needs a token count >= 0, got %s\n", v);
        return false;
      }
    } else if (k == "--skinny-splits") {
      long long up = -1, down = -1;
      a.skinny_splits = {std::sscanf(v, "%lld,%lld", &up, &down) == 2 ? up : -1, down};
      if (a.skinny_splits[0] < 0 || a.skinny_splits[1] < 0) {
        std::fprintf(stderr, "moe-bench: --skinny-splits needs two counts >= 0 (gate/up,down), got %s\n", v);
        return false;
      }
    } else {
      std::fprintf(stderr, "moe-bench: unknown flag %s\n", k.c_str());
      return false;
    }
  }
  if (a.prefill_tokens <= 0 || a.prefill_runs <= 0 || a.context <= 0 || a.steps <= 0 || a.warmup < 0 || a.batches.empty()) return false;
  for (int64_t b : a.batches) {
    if (b <= 0) return false;
  }
  return true;
}

// Writes `result` to `path`; the exit status of moe-bench.
int WriteJson(const std::string& path, const nlohmann::json& result) {
  std::ofstream out(path);
  out << result.dump(2) << "\n";
  if (!out) {
    std::fprintf(stderr, "moe-bench: cannot write %s\n", path.c_str());
    return 1;
  }
  std::printf("wrote %s\n", path.c_str());
  return 0;
}

// The engine's host time per step since its last reset, printed and as JSON.
nlohmann::json HostPerStep(const gpu::GpuEngine& e) {
  const gpu::GpuEngine::HostTimes& ht = e.host_times();
  const double n = static_cast<double>(std::max<int64_t>(1, ht.steps));
  std::printf("    host per step: prepare %.3f  enqueue %.3f  wait %.3f  finish %.3f ms\n", ht.prepare_ms / n,
              ht.enqueue_ms / n, ht.wait_ms / n, ht.finish_ms / n);
  return {{"prepare_ms", ht.prepare_ms / n},
          {"enqueue_ms", ht.enqueue_ms / n},
          {"wait_ms", ht.wait_ms / n},
          {"finish_ms", ht.finish_ms / n}};
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  using namespace moe;
  Args a;
  if (!ParseArgs(argc, argv, a)) {
    Usage();
    return 2;
  }
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  const ModelConfig c = Check(ModelConfig::FromFile(a.config), "config");
  std::string config_name = a.config.substr(a.config.find_last_of('/') + 1);
  if (config_name.size() > 5 && config_name.ends_with(".json")) config_name.resize(config_name.size() - 5);

  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    std::fprintf(stderr, "moe-bench: no CUDA device\n");
    return 1;
  }
  int mem_clock_khz = 0, bus_bits = 0, driver = 0, runtime = 0;
  cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  // Double data rate: 2 transfers per clock.
  const double peak_bw = 2.0 * mem_clock_khz * 1e3 * bus_bits / 8.0;  // bytes/s

  nlohmann::json kernels;
  if (a.kernels || a.kernels_only) {  // before the engine: they take a few GB for a moment
    auto wanted = [&](const char* f) {
      return std::find(a.kernel_figures.begin(), a.kernel_figures.end(), f) != a.kernel_figures.end();
    };
    kernels = wanted("basic") ? KernelFigures(c) : nlohmann::json::object();
    if (wanted("blas_candidates")) kernels["blas_candidates"] = BlasCandidateFigures(c);
    if (wanted("skinny_splits")) kernels["skinny_splits"] = SkinnySplitFigures(c);
    if (wanted("grouped_wgmma")) kernels["grouped_wgmma"] = GroupedGemmFigures(c);
    if (wanted("ep_rank_experts")) kernels["ep_rank_experts"] = EpRankExpertFigures(c);
  }
  if (a.kernels_only) {
    return WriteJson(a.out, {{"commit", a.commit.empty() ? "unknown" : a.commit},
                             {"command", command},
                             {"config", config_name},
                             {"machine",
                              {{"gpu", prop.name},
                               {"memory_gb", prop.totalGlobalMem / 1e9},
                               {"sms", prop.multiProcessorCount},
                               {"peak_memory_bandwidth_gbps", peak_bw / 1e9}}},
                             {"kernels", kernels}});
  }
  const double copy_bw =
      a.kernels && kernels.contains("copy_bandwidth_gbps") ? kernels["copy_bandwidth_gbps"].get<double>() * 1e9 : 0.0;

  int64_t max_batch = *std::max_element(a.batches.begin(), a.batches.end());
  for (int64_t b : a.profile_batches) max_batch = std::max(max_batch, b);
  for (int64_t b : a.trace_batches) max_batch = std::max(max_batch, b);
  if (!a.timeline_out.empty()) {
    for (int64_t b : a.timeline_batches) max_batch = std::max(max_batch, b);
  }
  const int64_t max_len = a.context + a.warmup + a.steps + 2;
  gpu::GpuEngineOptions opts;
  opts.kv_tokens = std::max<int64_t>(max_batch * ((max_len + 15) / 16 * 16), a.prefill_tokens + 16);
  opts.collect_load_stats = false;
  LocalCommunicator comm;
  const PlacementPlan plan = Check(PlacementPlan::Make(c.num_layers, c.num_experts, 1), "placement");
  const double load_t0 = NowMs();
  std::unique_ptr<gpu::GpuEngine> e = Check(gpu::GpuEngine::LoadSynthetic(c, comm, plan, opts, a.seed), "load");
  const double load_ms = NowMs() - load_t0;
  // What the load reserved for steps of up to max_step_tokens, beside kv_budget's estimate of it
  // (less its fixed 1 GiB for the libraries), which sizes the KV cache under a memory fraction.
  const int64_t step_estimate = StepBufferBytes(c, opts.max_step_tokens) - kLibraryBytes;
  std::printf("%s on %s: %.2f GB of bf16 weights, KV cache %.2f GB (%lld positions), step buffers for %lld tokens "
              "%.2f GB (estimate %.2f GB), loaded in %.0f ms\n",
              config_name.c_str(), prop.name, e->weight_bytes() / 1e9, e->kv_cache_bytes() / 1e9,
              static_cast<long long>(opts.kv_tokens), static_cast<long long>(opts.max_step_tokens),
              e->reserved_step_bytes() / 1e9, step_estimate / 1e9, load_ms);
  std::fflush(stdout);

  EngineDriver bench(*e, a.seed, a.context, a.prefill_chunk);
  nlohmann::json result;
  result["machine"] = {{"gpu", prop.name},
                       {"memory_gb", prop.totalGlobalMem / 1e9},
                       {"sms", prop.multiProcessorCount},
                       {"compute_capability", std::to_string(prop.major) + "." + std::to_string(prop.minor)},
                       {"peak_memory_bandwidth_gbps", peak_bw / 1e9},
                       {"copy_bandwidth_gbps", copy_bw / 1e9},
                       {"cuda_driver", driver},
                       {"cuda_runtime", runtime}};
  result["commit"] = a.commit.empty() ? "unknown" : a.commit;
  result["command"] = command;
  result["config"] = config_name;
  result["config_path"] = a.config;
  result["weights"] = {{"synthetic_seed", a.seed},
                       {"bytes", e->weight_bytes()},
                       {"expert_bytes", e->expert_weight_bytes()},
                       {"load_ms", load_ms}};
  result["kv_cache_bytes"] = e->kv_cache_bytes();
  result["step_buffers"] = {{"max_step_tokens", opts.max_step_tokens},
                            {"reserved_bytes", e->reserved_step_bytes()},
                            {"estimate_bytes", step_estimate}};
  if (a.kernels) result["kernels"] = kernels;

  // Prefill of 1 x N.
  auto prefill = [&](const char* what) {
    // Warm-up (first-touch allocations, cuBLASLt algorithm choices for the row counts prefills hit).
    for (int r = 0; r < 2; ++r) bench.Prefill(a.prefill_tokens);
    std::vector<double> runs;
    e->reset_host_times();
    std::vector<int64_t> new_algos;  // cuBLASLt algorithms chosen during each run (new keys)
    for (int r = 0; r < a.prefill_runs; ++r) {
      const int64_t before = gpu::Gemm::algo_counts().chosen;
      runs.push_back(bench.Prefill(a.prefill_tokens));
      new_algos.push_back(gpu::Gemm::algo_counts().chosen - before);
    }
    std::vector<double> sorted = runs;  // runs_ms keeps the order they ran in
    std::sort(sorted.begin(), sorted.end());
    const double ms = sorted[sorted.size() / 2];
    std::printf("prefill 1 x %lld (%s): %.2f ms (%.0f tokens/s)\n", static_cast<long long>(a.prefill_tokens), what,
                ms, a.prefill_tokens / (ms / 1e3));
    const nlohmann::json host = HostPerStep(*e);
    std::fflush(stdout);
    return nlohmann::json{{"batch", 1},
                          {"tokens", a.prefill_tokens},
                          {"experts", what},
                          {"ms", ms},
                          {"runs_ms", runs},
                          {"new_algorithms_per_run", new_algos},
                          {"host_per_step", host},
                          {"tokens_per_s", a.prefill_tokens / (ms / 1e3)}};
  };
  gpu::ExpertGemmTuning tuned;
  tuned.wgmma_grouped = a.wgmma;
  tuned.wgmma_tile = a.wgmma_tile;
  if (a.padded_max_tokens >= 0) tuned.padded_max_tokens = a.padded_max_tokens;
  tuned.skinny_splits_up = static_cast<int>(a.skinny_splits[0]);
  tuned.skinny_splits_down = static_cast<int>(a.skinny_splits[1]);
  e->set_expert_tuning(tuned);
  result["padded_max_tokens"] = tuned.padded_max_tokens;
  result["skinny_splits_forced"] = a.skinny_splits;
  result["experts"] = a.wgmma ? "grouped wgmma kernel above the skinny limit"
                              : "cuBLAS above the skinny limit (padded to the batch up to padded_max_tokens tokens, "
                                "then per expert on streams)";
  result["prefill"] = prefill(a.wgmma ? "grouped wgmma kernel" : "cuBLAS, experts on concurrent streams");
  if (a.variants) {
    nlohmann::json pv = nlohmann::json::array();
    gpu::ExpertGemmTuning t = tuned;
    t.blas = gpu::ExpertGemmTuning::Blas::kGrouped;
    e->set_expert_tuning(t);
    pv.push_back(prefill("cuBLAS grouped"));
    t.blas = gpu::ExpertGemmTuning::Blas::kSequential;
    e->set_expert_tuning(t);
    pv.push_back(prefill("cuBLAS one GEMM per expert, sequential"));
    for (int streams : {2, 4}) {
      t = tuned;
      t.concurrent_streams = streams;
      e->set_expert_tuning(t);
      pv.push_back(prefill(streams == 2 ? "cuBLAS, experts on 2 concurrent streams"
                                        : "cuBLAS, experts on 4 concurrent streams"));
    }
    t = tuned;
    t.wgmma_grouped = true;
    e->set_expert_tuning(t);
    pv.push_back(prefill("grouped wgmma kernel (no host synchronisation)"));
    t = tuned;
    t.skinny_max_rows_per_expert = 1 << 20;  // decode's kernel, several passes per expert
    e->set_expert_tuning(t);
    pv.push_back(prefill("skinny grouped kernel (no host synchronisation)"));
    e->set_expert_tuning(tuned);
    gpu::Gemm::set_algo_choice(gpu::Gemm::AlgoChoice::kHeuristic);
    pv.push_back(prefill("cuBLAS with cuBLASLt's first algorithm (not timed)"));
    gpu::Gemm::set_algo_choice(gpu::Gemm::AlgoChoice::kTimed);
    result["prefill_variants"] = pv;
  }

  // Decode.
  const double E = static_cast<double>(c.num_experts), k = static_cast<double>(c.experts_per_token);
  const double expert_bytes = 2.0 * c.expert_params();
  const double replicated_read =
      static_cast<double>(e->weight_bytes() - e->expert_weight_bytes()) - 2.0 * c.vocab_size * c.hidden_size *
                                                                              (c.tie_word_embeddings ? 0 : 1);
  const double floor_bw = copy_bw > 0 ? copy_bw : peak_bw;
  nlohmann::json decode = nlohmann::json::array(), variants = nlohmann::json::array();
  for (int64_t B : a.batches) {
    const double touched = E * (1.0 - std::pow(1.0 - k / E, static_cast<double>(B)));
    const double floor_bytes = replicated_read + c.num_layers * touched * expert_bytes;
    const double floor_ms = floor_bw > 0 ? floor_bytes / floor_bw * 1e3 : 0;
    // Every run on fresh 128-token contexts: runs after each other on the same sequences would see
    // longer contexts (slower attention) the later they come.
    auto measure = [&](const char* what) {
      const std::vector<int64_t> ids = bench.AddContexts(B);
      bench.Decode(ids, a.warmup);
      e->reset_host_times();
      const double ms = bench.Decode(ids, a.steps);
      const double per_step = ms / a.steps;
      std::printf("decode batch %4lld, context %lld (%s): %8.2f ms/step, %9.1f tokens/s (byte floor %.1f GB, %.2f ms)\n",
                  static_cast<long long>(B), static_cast<long long>(a.context), what, per_step,
                  B * a.steps / (ms / 1e3), floor_bytes / 1e9, floor_ms);
      const nlohmann::json host = HostPerStep(*e);
      std::fflush(stdout);
      bench.Free(ids);
      return nlohmann::json{{"host_per_step", host},
                            {"batch", B},
                            {"context", a.context},
                            {"variant", what},
                            {"steps", a.steps},
                            {"ms_per_step", per_step},
                            {"tokens_per_s", B * a.steps / (ms / 1e3)},
                            {"byte_floor_gb", floor_bytes / 1e9},
                            {"byte_floor_ms", floor_ms},
                            {"fraction_of_floor", floor_ms > 0 ? floor_ms / per_step : 0}};
    };
    decode.push_back(measure("default"));
    if (a.variants) {
      e->set_cuda_graphs(false);
      variants.push_back(measure("no CUDA graphs"));
      e->set_cuda_graphs(true);
      gpu::ExpertGemmTuning blas = tuned;
      blas.skinny_max_rows_per_expert = 0;
      blas.device_exchange_skinny_max_rows_per_expert = 0;
      blas.padded_max_tokens = 0;
      e->set_expert_tuning(blas);
      variants.push_back(measure("experts through cuBLAS per expert (host sync per layer)"));
      blas.padded_max_tokens = std::max<int64_t>(B, tuned.padded_max_tokens);
      e->set_expert_tuning(blas);
      variants.push_back(measure("experts through cuBLAS padded to the batch (strided-batched, CUDA graph)"));
      blas.padded_max_tokens = 0;
      e->set_expert_tuning(blas);
      gpu::Gemm::set_algo_choice(gpu::Gemm::AlgoChoice::kHeuristic);
      variants.push_back(measure("cuBLAS with cuBLASLt's first algorithm (not timed)"));
      gpu::Gemm::set_algo_choice(gpu::Gemm::AlgoChoice::kTimed);
      gpu::ExpertGemmTuning skinny = tuned;
      skinny.skinny_max_rows_per_expert = 1 << 20;
      e->set_expert_tuning(skinny);
      variants.push_back(measure("experts through the skinny kernel (no host sync, CUDA graph)"));
      gpu::ExpertGemmTuning wgmma = tuned;
      wgmma.wgmma_grouped = true;
      e->set_expert_tuning(wgmma);
      variants.push_back(measure("experts through the grouped wgmma kernel above skinny (no host sync, CUDA graph)"));
      e->set_expert_tuning(tuned);
      e->set_dense_skinny_max_rows(0);
      variants.push_back(measure("dense GEMMs all through cuBLAS"));
      e->set_dense_skinny_max_rows(64);
      variants.push_back(measure("dense GEMMs through skinny up to 64 rows"));
      e->set_dense_skinny_max_rows(gpu::Gemm::kDefaultSkinnyMaxRows);
      e->set_programmatic_launch(false);
      variants.push_back(measure("no programmatic dependent launch"));
      e->set_programmatic_launch(true);
      bench.set_sample_next(std::nullopt);
      variants.push_back(measure("logits rows to the host (no pick on the device)"));
      bench.set_sample_next(SamplingParams{.temperature = 0.8f, .top_k = 50, .top_p = 0.95f, .seed = 1});
      variants.push_back(measure("sampled on the device: temperature 0.8, top-k 50, top-p 0.95"));
      bench.set_sample_next(SamplingParams{.temperature = 1.0f, .top_p = 0.9f, .seed = 1});
      variants.push_back(measure("sampled on the device: temperature 1, top-p 0.9 (no top-k)"));
      bench.set_sample_next(SamplingParams{.temperature = 0.f});
    }
  }
  result["decode"] = decode;
  if (a.variants) result["decode_variants"] = variants;
  result["byte_floor_bandwidth_gbps"] = floor_bw / 1e9;
  result["graphs"] = {{"captured", e->graphs_captured()}, {"launches", e->graph_launches()}};
  const gpu::Gemm::AlgoCounts algos = gpu::Gemm::algo_counts();
  result["cublaslt_algorithms"] = {{"chosen", algos.chosen}, {"timed", algos.timed}, {"exact_rows", algos.exact}};

  // Profiling mode: the per-layer stage split of decode at each profile batch size and of the prefill.
  if (!a.profile_batches.empty()) {
    auto print = [](const std::string& name, const nlohmann::json& j) {
      std::printf("profile %-12s per layer: attention %.3f  router %.3f  dispatch %.3f  experts %.3f  combine %.3f ms;"
                  " outside layers %.3f ms/step; step %.2f ms\n",
                  name.c_str(), j["attention_ms"].get<double>(), j["router_ms"].get<double>(),
                  j["dispatch_ms"].get<double>(), j["experts_ms"].get<double>(), j["combine_ms"].get<double>(),
                  j["outside_layers_ms_per_step"].get<double>(), j["step_ms"].get<double>());
    };
    e->set_profile_stages(true);
    nlohmann::json profiles = nlohmann::json::array();
    for (int64_t B : a.profile_batches) {
      std::vector<int64_t> ids = bench.AddContexts(B);
      bench.Decode(ids, 1);
      e->reset_stage_times();
      bench.Decode(ids, std::min(a.steps, 8));
      bench.Free(ids);
      nlohmann::json d = PerLayer(e->stage_times());
      d["batch"] = B;
      d["context"] = a.context;
      print("decode b" + std::to_string(B), d);
      profiles.push_back(d);
    }
    e->reset_stage_times();
    bench.Prefill(a.prefill_tokens);
    nlohmann::json p = PerLayer(e->stage_times());
    e->set_profile_stages(false);
    p["tokens"] = a.prefill_tokens;
    print("prefill", p);
    result["profile"] = {{"decode", profiles}, {"prefill", p}, {"unit", "ms per layer per step (CUDA events, no graphs)"}};
  }
  // Kernel timelines of decode steps (graph replays), in a build with -DMOE_KERNEL_TRACE=ON.
  if (gpu::KernelTraceAvailable() && !a.trace_batches.empty()) {
    nlohmann::json traces = nlohmann::json::array();
    const int steps = std::min(a.steps, 8);
    for (int64_t B : a.trace_batches) {
      std::vector<int64_t> ids = bench.AddContexts(B);
      bench.Decode(ids, a.warmup);
      e->set_cuda_graphs(false);  // drops the graphs: the traced steps capture theirs again
      e->set_cuda_graphs(true);
      gpu::StartKernelTrace(static_cast<size_t>(steps) * 4096);
      bench.Decode(ids, steps);
      const gpu::KernelTrace trace = gpu::StopKernelTrace();
      nlohmann::json tr = SummariseDecodeTrace(trace, c.num_layers, steps);
      tr["marks"] = SummariseTraceMarks(trace);
      tr["marks_dropped"] = trace.marks_dropped;  // past the capacity: the marks' means leave them out
      bench.Free(ids);
      tr["batch"] = B;
      tr["context"] = a.context;
      if (tr.contains("error")) {
        std::printf("trace decode b%lld: %s\n", static_cast<long long>(B), tr["error"].get<std::string>().c_str());
      } else {
        std::printf("trace decode b%lld: span %.1f us/step, layer %.1f us%s:", static_cast<long long>(B),
                    tr["span_us"].get<double>(), tr["layer_us"].get<double>(),
                    tr.contains("layers_averaged") ? " (all layers but the last)" : "");
        for (const auto& k : tr["layer"]) std::printf(" %s %.1f;", k["kernel"].get<std::string>().c_str(), k["us"].get<double>());
        std::printf("\n");
      }
      if (!tr["marks"].empty()) {
        std::printf("trace marks b%lld (us after the kernel's wait):", static_cast<long long>(B));
        for (const auto& m : tr["marks"]) {
          std::printf(" %s #%d %.2f;", m["kernel"].get<std::string>().c_str(), m["mark"].get<int>(),
                      m["us_after_wait"].get<double>());
        }
        std::printf("\n");
      }
      std::fflush(stdout);
      traces.push_back(tr);
    }
    result["trace"] = {{"decode", traces},
                       {"unit", "us per layer (layer) and per step (outside_layers): the time from a kernel passing "
                                "its wait for the previous kernel to the next kernel doing so"}};
  }
  // Activity timelines (CUPTI): one prefill, and decode steps at each timeline batch.
  if (!a.timeline_out.empty()) {
    nlohmann::json summaries, records;
    auto record = [&](const std::string& name, auto&& work) {
      ActivityTimeline timeline;
      std::string error;
      if (!timeline.Start(error)) {
        std::printf("timeline %s: %s\n", name.c_str(), error.c_str());
        summaries[name] = {{"error", error}};
        return;
      }
      work();
      const std::vector<ActivityRecord> recs = timeline.Stop();
      nlohmann::json s = SummariseTimeline(recs);
      if (s.contains("span_us")) {
        std::printf("timeline %s: span %.1f us, device busy %.1f us, idle %.1f us in %lld stretches\n", name.c_str(),
                    s["span_us"].get<double>(), s["busy_us"].get<double>(), s["idle_us"].get<double>(),
                    static_cast<long long>(s["idle_stretches"].get<size_t>()));
      }
      std::fflush(stdout);
      summaries[name] = s;
      records[name] = TimelineRecords(recs);
    };
    bench.Prefill(a.prefill_tokens);
    record("prefill", [&] { bench.Prefill(a.prefill_tokens); });
    for (int64_t B : a.timeline_batches) {
      std::vector<int64_t> ids = bench.AddContexts(B);
      bench.Decode(ids, a.warmup);
      record("decode_b" + std::to_string(B), [&] { bench.Decode(ids, 2); });
      bench.Free(ids);
    }
    result["timeline"] = summaries;
    result["timeline"]["records_file"] = a.timeline_out;
    if (int rc = WriteJson(a.timeline_out, records); rc != 0) return rc;
  }
  result["notes"] =
      "decode: CUDA graphs, skinny grouped expert GEMMs up to 2 rows per expert, then cuBLAS per expert on "
      "concurrent streams (one strided-batched product over the experts padded to the batch up to "
      "padded_max_tokens tokens, when set), device-side routing layout; prefill: cuBLAS expert GEMMs on concurrent "
      "streams; byte_floor_* = weights a decode step must read at the measured copy bandwidth (see "
      "engine_bench.cc)";

  return WriteJson(a.out, result);
}
