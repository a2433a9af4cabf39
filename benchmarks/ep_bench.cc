// moe-ep-bench: the GPU engine expert-parallel over NCCL, one rank per GPU, on a model config with
// synthetic bf16 weights (default: Mixtral-8x7B). Run it under mpirun with one rank per GPU:
//   mpirun -np 2 build-gpu/benchmarks/moe-ep-bench --out ep.json
// Rank r holds the experts PlacementPlan::Make(layers, experts, W) gives it and runs attention for
// its own sequences; in every MoE layer the routed rows cross ranks by NCCL all-to-all. Measures
//   - the row exchange alone: one dispatch all-to-all and its return (NcclExchange::AllToAllRows)
//     of T x top-k rows of hidden_size bf16 per rank, spread evenly over the ranks, at a few T
//     (CUDA events around many back-to-back pairs);
//   - prefill: every rank one sequence of N tokens in the same step (W x N tokens), and 1 x N on
//     rank 0 while the others take empty steps (they still join every layer's exchange);
//   - decode at total batches (default 64, 256, 1024; B / W sequences per rank) with 128-token
//     contexts: ms per step (the slowest rank's wall clock), tokens/s over all ranks;
//   - in the profiling mode (CUDA events at the stage boundaries; no graphs), the per-layer split
//     of every rank (attention, router, dispatch, experts, combine): dispatch runs from the router's
//     end through the packing, the count exchange and the rows' all-to-all (on the host-count path
//     also the expert ids' trip to the host); combine is the rows' return all-to-all and the
//     weighted sum.
// Rank 0 writes one JSON object (machine, ranks, commit, command line, config, every figure).
#include <mpi.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "benchmarks/engine_driver.h"
#include "coordinator/placement.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gpu_engine.h"
#include "worker/gpu/nccl_exchange.h"
#include "worker/gpu/peer_exchange.h"

namespace moe {
namespace {

struct Args {
  std::string config = std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/mixtral-8x7b-v0.1.json";
  std::string out = "moe-ep-bench.json";
  std::string commit;
  uint64_t seed = 1;
  int64_t prefill_tokens = 512;
  int prefill_runs = 5;
  std::vector<int64_t> batches = {64, 256, 1024};  // total over the ranks
  std::vector<int64_t> profile_batches;            // total; default: 64 tokens per rank, and 256
  std::vector<int64_t> exchange_tokens = {1, 16, 64, 256};  // per rank
  int64_t context = 128;
  int warmup = 3;
  int steps = 16;
  int64_t prefill_chunk = 2048;
  std::string exchange = "nccl";  // the device exchange's blocks: nccl, or peer (PeerExchange)
};

void Usage() {
  std::fprintf(stderr,
               "usage: mpirun -np W moe-ep-bench [--config FILE] [--out FILE] [--commit SHA] [--seed N]\n"
               "                 [--prefill-tokens N] [--batches 64,256,1024 (total)] [--context N]\n"
               "                 [--warmup N] [--steps N] [--profile-batches LIST (total; 0: none)]\n"
               "                 [--exchange-tokens 1,16,64,256 (per rank)] [--exchange nccl|peer]\n"
               "One rank per GPU. The commit defaults to $MOE_COMMIT. --exchange peer: the decode steps' rows are\n"
               "written straight into the other GPUs' memory (PeerExchange) instead of NCCL's fixed blocks.\n");
}

bool ParseArgs(int argc, char** argv, Args& a, bool& profile_given) {
  if (const char* c = std::getenv("MOE_COMMIT")) a.commit = c;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h" || i + 1 >= argc) return false;
    const char* v = argv[++i];
    if (k == "--config") a.config = v;
    else if (k == "--out") a.out = v;
    else if (k == "--commit") a.commit = v;
    else if (k == "--seed") a.seed = std::strtoull(v, nullptr, 10);
    else if (k == "--prefill-tokens") a.prefill_tokens = std::atoll(v);
    else if (k == "--context") a.context = std::atoll(v);
    else if (k == "--warmup") a.warmup = std::atoi(v);
    else if (k == "--steps") a.steps = std::atoi(v);
    else if (k == "--batches") a.batches = ParseList(v);
    else if (k == "--profile-batches") a.profile_batches = ParseList(v), profile_given = true;
    else if (k == "--exchange-tokens") a.exchange_tokens = ParseList(v);
    else if (k == "--exchange") a.exchange = v;
    else return false;
  }
  return (a.exchange == "nccl" || a.exchange == "peer") && a.prefill_tokens > 0 && a.context > 0 && a.steps > 0 &&
         a.warmup >= 0 && !a.batches.empty();
}

double MaxOverRanks(double v) {
  double m = v;
  MPI_Allreduce(&v, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

// Every rank's copy of a few numbers, in rank order (on every rank).
std::vector<std::vector<double>> AllRanks(const std::vector<double>& mine, int W) {
  std::vector<double> all(mine.size() * static_cast<size_t>(W));
  MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_DOUBLE, all.data(), static_cast<int>(mine.size()),
                MPI_DOUBLE, MPI_COMM_WORLD);
  std::vector<std::vector<double>> out(static_cast<size_t>(W));
  for (int r = 0; r < W; ++r) out[r].assign(all.begin() + r * mine.size(), all.begin() + (r + 1) * mine.size());
  return out;
}

// The row exchange alone: `pairs` dispatch + return all-to-alls of T * k rows per rank, split as
// evenly as the ranks allow (the first T*k % W destinations get one more row).
nlohmann::json ExchangeFigures(gpu::NcclExchange& x, const ModelConfig& c, const std::vector<int64_t>& tokens) {
  const int W = x.size();
  const int64_t H = c.hidden_size, k = c.experts_per_token;
  gpu::CudaStream stream;
  const cudaStream_t s = stream.get();
  cudaEvent_t a = nullptr, b = nullptr;
  MOE_CUDA_CHECK(cudaEventCreate(&a));
  MOE_CUDA_CHECK(cudaEventCreate(&b));
  nlohmann::json out = nlohmann::json::array();
  for (int64_t T : tokens) {
    const int64_t n = T * k;
    std::vector<int64_t> rows(static_cast<size_t>(W), n / W);
    for (int64_t d = 0; d < n % W; ++d) ++rows[static_cast<size_t>(d)];
    // Every rank sends the same split, so rank r receives rows[r] from each rank.
    std::vector<int64_t> recv(static_cast<size_t>(W), rows[static_cast<size_t>(x.rank())]);
    const int64_t nr = rows[static_cast<size_t>(x.rank())] * W;
    gpu::DeviceBuffer<gpu::bf16> send(static_cast<size_t>(std::max<int64_t>(1, n * H)));
    gpu::DeviceBuffer<gpu::bf16> mid(static_cast<size_t>(std::max<int64_t>(1, nr * H)));
    gpu::DeviceBuffer<gpu::bf16> back(static_cast<size_t>(std::max<int64_t>(1, n * H)));
    MOE_CUDA_CHECK(cudaMemsetAsync(send.get(), 0, sizeof(gpu::bf16) * n * H, s));
    auto pair = [&] {
      x.AllToAllRows(send.get(), rows, mid.get(), recv, H, s);
      x.AllToAllRows(mid.get(), recv, back.get(), rows, H, s);
    };
    for (int i = 0; i < 10; ++i) pair();
    MOE_CUDA_CHECK(cudaStreamSynchronize(s));
    MPI_Barrier(MPI_COMM_WORLD);
    const int pairs = 100;
    MOE_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < pairs; ++i) pair();
    MOE_CUDA_CHECK(cudaEventRecord(b, s));
    MOE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    const double us = MaxOverRanks(1e3 * ms / pairs);
    const double peer_bytes = static_cast<double>(rows[0]) * H * sizeof(gpu::bf16);
    if (x.rank() == 0) {
      std::printf("exchange %4lld tokens/rank (%lld rows, %.0f KB per peer): dispatch + return %.1f us\n",
                  static_cast<long long>(T), static_cast<long long>(n), peer_bytes / 1024, us);
    }
    out.push_back({{"tokens_per_rank", T},
                   {"rows_per_rank", n},
                   {"max_bytes_per_peer", peer_bytes},
                   {"dispatch_plus_return_us", us},
                   {"pairs", pairs}});
  }
  MOE_CUDA_CHECK(cudaEventDestroy(a));
  MOE_CUDA_CHECK(cudaEventDestroy(b));
  return out;
}

int Run(int argc, char** argv) {
  int rank = 0, W = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  Args a;
  bool profile_given = false;
  if (!ParseArgs(argc, argv, a, profile_given)) {
    if (rank == 0) Usage();
    return 2;
  }
  if (!profile_given) a.profile_batches = W * 64 == 256 ? std::vector<int64_t>{256} : std::vector<int64_t>{64 * W, 256};
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  const ModelConfig c = Check(ModelConfig::FromFile(a.config), "config");
  std::string config_name = a.config.substr(a.config.find_last_of('/') + 1);
  if (config_name.ends_with(".json")) config_name.resize(config_name.size() - 5);
  // Total batches must split evenly: every rank takes the same number of steps.
  for (auto* list : {&a.batches, &a.profile_batches}) {
    std::vector<int64_t> kept;
    for (int64_t b : *list) {
      if (b % W == 0) kept.push_back(b);
      else if (rank == 0) std::printf("batch %lld skipped: not a multiple of %d ranks\n", static_cast<long long>(b), W);
    }
    *list = kept;
  }

  // One GPU per rank, or NCCL cannot run: say so on every rank rather than fail inside NCCL.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  const char* local_size = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int local_ranks = local_size != nullptr ? std::atoi(local_size) : W;
  const int lacking = devices < local_ranks ? 1 : 0;
  if (lacking) {
    std::fprintf(stderr, "moe-ep-bench: rank %d: %d ranks on this node but %d CUDA devices (one GPU per rank)\n",
                 rank, local_ranks, devices);
  }
  if (MaxOverRanks(lacking) > 0) return 1;  // every rank stops, none is left in a collective

  gpu::NcclExchange nccl(MPI_COMM_WORLD);
  MpiCommunicator comm(MPI_COMM_WORLD);
  cudaDeviceProp prop{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, nccl.device()));

  nlohmann::json result;
  result["exchange"] = ExchangeFigures(nccl, c, a.exchange_tokens);

  int64_t max_batch = *std::max_element(a.batches.begin(), a.batches.end());
  for (int64_t b : a.profile_batches) max_batch = std::max(max_batch, b);
  const int64_t per_rank = max_batch / W;
  const int64_t max_len = a.context + 2 * (a.warmup + a.steps) + 2;
  const PlacementPlan plan = Check(PlacementPlan::Make(c.num_layers, c.num_experts, W), "placement");
  gpu::GpuEngineOptions opts;
  opts.nccl = &nccl;
  std::unique_ptr<gpu::PeerExchange> peers;
  if (a.exchange == "peer") {
    std::string why;
    peers = gpu::PeerExchange::Make(MPI_COMM_WORLD, gpu::GpuMoeLayer::PeerBlockBytes(c, W), false, &why);
    if (peers == nullptr) {  // null on every rank alike
      if (rank == 0) std::fprintf(stderr, "moe-ep-bench: --exchange peer: not available: %s\n", why.c_str());
      return 1;
    }
    opts.peers = peers.get();
  }
  opts.kv_tokens = std::max<int64_t>(per_rank * ((max_len + 15) / 16 * 16), a.prefill_tokens + 16);
  opts.collect_load_stats = false;
  const double load_t0 = NowMs();
  std::unique_ptr<gpu::GpuEngine> e = Check(gpu::GpuEngine::LoadSynthetic(c, comm, plan, opts, a.seed), "load");
  const double load_ms = MaxOverRanks(NowMs() - load_t0);
  if (rank == 0) {
    std::printf("%s on %d x %s: %.2f GB of bf16 weights on rank 0 (%.2f GB of experts), KV cache %.2f GB, loaded in "
                "%.0f ms\n",
                config_name.c_str(), W, prop.name, e->weight_bytes() / 1e9, e->expert_weight_bytes() / 1e9,
                e->kv_cache_bytes() / 1e9, load_ms);
    std::fflush(stdout);
  }
  // Ranks draw different tokens (different routing), from one seed.
  EngineDriver bench(*e, a.seed + 1000003ULL * static_cast<uint64_t>(rank), a.context, a.prefill_chunk);

  result["machine"] = {{"gpu", prop.name},
                       {"gpus", W},
                       {"memory_gb", prop.totalGlobalMem / 1e9},
                       {"sms", prop.multiProcessorCount}};
  result["ranks"] = W;
  result["device_exchange"] = a.exchange;  // nccl or peer
  result["commit"] = a.commit.empty() ? "unknown" : a.commit;
  result["command"] = "mpirun -np " + std::to_string(W) + " " + command;  // one rank per GPU
  result["config"] = config_name;
  result["weights"] = {{"synthetic_seed", a.seed},
                       {"bytes_rank0", e->weight_bytes()},
                       {"expert_bytes_rank0", e->expert_weight_bytes()},
                       {"load_ms", load_ms}};

  // Prefill: every rank one sequence, then rank 0 alone.
  auto prefill = [&](bool all) {
    const int64_t mine = all || rank == 0 ? a.prefill_tokens : 0;
    for (int r = 0; r < 2; ++r) bench.Prefill(mine);
    std::vector<double> runs;
    for (int r = 0; r < a.prefill_runs; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      runs.push_back(MaxOverRanks(bench.Prefill(mine)));
    }
    std::sort(runs.begin(), runs.end());
    const double ms = runs[runs.size() / 2];
    const int64_t tokens = a.prefill_tokens * (all ? W : 1);
    if (rank == 0) {
      std::printf("prefill %s x %lld: %.2f ms (%.0f tokens/s)\n", all ? "every rank 1" : "rank 0 only 1",
                  static_cast<long long>(a.prefill_tokens), ms, tokens / (ms / 1e3));
      std::fflush(stdout);
    }
    return nlohmann::json{{"sequences", all ? W : 1},
                          {"tokens_per_sequence", a.prefill_tokens},
                          {"ms", ms},
                          {"runs_ms", runs},
                          {"tokens_per_s", tokens / (ms / 1e3)}};
  };
  result["prefill"] = {prefill(true), prefill(false)};

  nlohmann::json decode = nlohmann::json::array(), variants = nlohmann::json::array();
  auto measure = [&](int64_t B, const char* what) {
    const std::vector<int64_t> ids = bench.AddContexts(B / W);
    bench.Decode(ids, a.warmup);
    MPI_Barrier(MPI_COMM_WORLD);
    const double ms = MaxOverRanks(bench.Decode(ids, a.steps));
    bench.Free(ids);
    const double per_step = ms / a.steps;
    if (rank == 0) {
      std::printf("decode batch %4lld (%lld per rank), context %lld (%s): %8.2f ms/step, %9.1f tokens/s\n",
                  static_cast<long long>(B), static_cast<long long>(B / W), static_cast<long long>(a.context), what,
                  per_step, B * a.steps / (ms / 1e3));
      std::fflush(stdout);
    }
    return nlohmann::json{{"batch", B},
                          {"batch_per_rank", B / W},
                          {"context", a.context},
                          {"variant", what},
                          {"steps", a.steps},
                          {"ms_per_step", per_step},
                          {"tokens_per_s", B * a.steps / (ms / 1e3)}};
  };
  const gpu::ExpertGemmTuning tuned;
  for (int64_t B : a.batches) {
    decode.push_back(measure(B, "default"));
    // Behind the device exchange the skinny kernel runs up to 48 rows per expert; one GPU switches
    // to cuBLAS from 2 (ExpertGemmTuning). The same switch here, for the comparison.
    gpu::ExpertGemmTuning blas = tuned;
    blas.device_exchange_skinny_max_rows_per_expert = blas.skinny_max_rows_per_expert;
    e->set_expert_tuning(blas);
    variants.push_back(measure(B, "experts through cuBLAS from 2 rows per expert"));
    // Above the skinny limit (routed rows per expert on average), on the device exchange's batches,
    // the grouped wgmma kernel or cuBLAS: whichever the default is not.
    const bool above_skinny = B * c.experts_per_token > tuned.device_exchange_skinny_max_rows_per_expert * c.num_experts;
    if (above_skinny && B / W <= gpu::GpuMoeLayer::kDeviceExchangeMaxRows) {
      gpu::ExpertGemmTuning other = tuned;
      other.device_exchange_wgmma = !tuned.device_exchange_wgmma;
      e->set_expert_tuning(other);
      variants.push_back(measure(B, other.device_exchange_wgmma
                                        ? "above the skinny limit the grouped wgmma kernel (no host sync, CUDA graph)"
                                        : "above the skinny limit cuBLAS (one host sync a layer, no CUDA graph)"));
    }
    e->set_expert_tuning(tuned);
  }
  result["decode"] = decode;
  result["decode_variants"] = variants;

  if (!a.profile_batches.empty()) {
    e->set_profile_stages(true);
    nlohmann::json profiles = nlohmann::json::array();
    for (int64_t B : a.profile_batches) {
      const std::vector<int64_t> ids = bench.AddContexts(B / W);
      bench.Decode(ids, 1);
      e->reset_stage_times();
      bench.Decode(ids, std::min(a.steps, 8));
      bench.Free(ids);
      const nlohmann::json d = PerLayer(e->stage_times());
      const char* keys[] = {"attention_ms", "router_ms", "dispatch_ms", "experts_ms", "combine_ms",
                            "outside_layers_ms_per_step", "step_ms"};
      std::vector<double> mine;
      for (const char* k : keys) mine.push_back(d[k].get<double>());
      const auto all = AllRanks(mine, W);
      nlohmann::json per_rank = nlohmann::json::array();
      for (int r = 0; r < W; ++r) {
        nlohmann::json pr;
        for (size_t i = 0; i < std::size(keys); ++i) pr[keys[i]] = all[r][i];
        per_rank.push_back(pr);
        if (rank == 0) {
          std::printf("profile decode b%lld rank %d per layer: attention %.3f  router %.3f  dispatch %.3f  experts %.3f"
                      "  combine %.3f ms; outside layers %.3f ms/step; step %.2f ms\n",
                      static_cast<long long>(B), r, all[r][0], all[r][1], all[r][2], all[r][3], all[r][4], all[r][5],
                      all[r][6]);
        }
      }
      if (rank == 0) std::fflush(stdout);
      profiles.push_back({{"batch", B}, {"batch_per_rank", B / W}, {"context", a.context}, {"ranks", per_rank}});
    }
    e->set_profile_stages(false);
    result["profile"] = {{"decode", profiles},
                         {"unit", "ms per layer per step (CUDA events, no graphs), every rank"}};
  }
  result["notes"] =
      "expert parallel over NCCL, one rank per GPU; up to 256 rows per rank the device exchange (fixed-capacity "
      "blocks carrying their counts, through NCCL or with exchange peer written straight into the other GPUs; "
      "with up to 48 routed rows per expert on average skinny experts and no host synchronisation, in CUDA graphs; "
      "above that cuBLAS experts after one synchronisation for the received counts, or with "
      "ExpertGemmTuning::device_exchange_wgmma the grouped wgmma kernel, host-free); above 256 rows per rank the "
      "exchange with the counts on the host (one synchronisation per layer for the routing, one for the counts); "
      "times are the slowest rank's";
  e.reset();  // the engine before the exchange it uses

  if (rank == 0) {
    std::ofstream out(a.out);
    out << result.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "moe-ep-bench: cannot write %s\n", a.out.c_str());
      return 1;
    }
    std::printf("wrote %s\n", a.out.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 1;
  try {
    rc = moe::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-ep-bench: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  // A rank that fails alone must not leave the others in a collective.
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
