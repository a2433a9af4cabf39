#include "benchmarks/kernel_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "benchmarks/median_time.h"
#include "common/uniform_draw.h"
#include "kernels/kernels.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/random_fill.h"
#include "worker/gpu/sample_row_params.h"

namespace moe {
namespace {

using gpu::bf16;

}  // namespace

std::vector<std::vector<int32_t>> DrawTopK(int64_t tokens, int64_t E, int64_t k, std::mt19937& rng) {
  std::vector<std::vector<int32_t>> per(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t j = 0; j < k; ++j) per[static_cast<size_t>(order[static_cast<size_t>(j)])].push_back(static_cast<int32_t>(t));
  }
  return per;
}

nlohmann::json KernelFigures(const ModelConfig& c) {
  nlohmann::json out;
  gpu::CudaStream stream;
  const cudaStream_t s = stream.get();
  {
    // Copy bandwidth: 1 GiB device to device, bytes read plus written.
    const size_t bytes = size_t{1} << 30;
    gpu::DeviceBuffer<unsigned char> src(bytes), dst(bytes);
    MOE_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, s));
    const double ms = MedianMs(s, 2, 10, [&](int) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s));
    });
    out["copy_bandwidth_gbps"] = 2.0 * bytes / (ms / 1e3) / 1e9;
  }
  {
    // The experts' two matrices and the dense ones, 8 copies of each so that successive runs read
    // from memory, not L2 (the cache holds 50 MB; one w13 is 235 MB at Mixtral-8x7B shape).
    const int64_t H = c.hidden_size, I = c.intermediate_size;
    constexpr int kCopies = 8;
    gpu::Gemm gemm(s);
    struct Shape {
      const char* name;
      int64_t N, K;
      gpu::SkinnyEpilogue epi;
      int64_t out_cols;
    };
    const int64_t qkvd = c.q_dim() + 2 * c.kv_dim();
    const Shape shapes[] = {{"w13_swiglu", I, H, gpu::SkinnyEpilogue::kSwiGluBf16, I},
                            {"w2", H, I, gpu::SkinnyEpilogue::kStoreBf16, H},
                            {"qkv", qkvd, H, gpu::SkinnyEpilogue::kStoreBf16, qkvd},
                            {"o_proj", H, c.q_dim(), gpu::SkinnyEpilogue::kStoreBf16, H},
                            {"lm_head", c.vocab_size, H, gpu::SkinnyEpilogue::kStoreBf16, c.vocab_size}};
    nlohmann::json rows = nlohmann::json::array();
    for (const Shape& sh : shapes) {
      const int64_t wrows = sh.epi == gpu::SkinnyEpilogue::kSwiGluBf16 ? 2 * sh.N : sh.N;
      const int64_t welems = wrows * sh.K;
      gpu::DeviceBuffer<bf16> w(static_cast<size_t>(welems * kCopies));
      gpu::FillNormal(w.get(), welems * kCopies, 7, 1, 0.f, 0.02f, s);
      constexpr int64_t kMaxRows = 64;
      gpu::DeviceBuffer<bf16> x(static_cast<size_t>(kMaxRows * sh.K)), y(static_cast<size_t>(kMaxRows * 2 * sh.N));
      gpu::FillNormal(x.get(), kMaxRows * sh.K, 8, 2, 0.f, 1.f, s);
      const double wbytes = 2.0 * welems;
      for (int64_t M : {1, 8, 16, 32, 64}) {
        gpu::SkinnyGroups g;
        g.rows = M;
        const int splits = gpu::SkinnySplits(sh.N, sh.K, sh.epi, 1, M);
        gpu::DeviceBuffer<float> ws(std::max<size_t>(1, gpu::SkinnyWorkspaceFloats(M, sh.N, sh.epi, splits)));
        gpu::DeviceBuffer<int32_t> counters(gpu::SkinnyCounters(sh.N, sh.epi, 1));
        MOE_CUDA_CHECK(cudaMemset(counters.get(), 0, sizeof(int32_t) * counters.size()));
        const double skinny = MedianMs(s, 3, 16, [&](int i) {
          g.weight = w.get() + (i % kCopies) * welems;
          gpu::SkinnyGemm(x.get(), sh.K, g, sh.N, sh.epi, y.get(), M, splits, ws.get(), M, counters.get(), s);
        });
        const double blas = MedianMs(s, 3, 16, [&](int i) {
          gemm.LinearBlas(x.get(), M, sh.K, w.get() + (i % kCopies) * welems, wrows, y.get());
        });
        rows.push_back({{"matrix", sh.name},
                        {"rows", M},
                        {"weight_mb", wbytes / 1e6},
                        {"splits", splits},
                        {"skinny_us", skinny * 1e3},
                        {"skinny_gbps", wbytes / (skinny / 1e3) / 1e9},
                        {"cublas_us", blas * 1e3},
                        {"cublas_gbps", wbytes / (blas / 1e3) / 1e9}});
        std::printf("gemm %-10s rows %2lld: skinny %7.1f us (%6.0f GB/s)  cuBLAS %7.1f us (%6.0f GB/s)\n", sh.name,
                    static_cast<long long>(M), skinny * 1e3, wbytes / (skinny / 1e3) / 1e9, blas * 1e3,
                    wbytes / (blas / 1e3) / 1e9);
      }
    }
    out["gemms"] = rows;
  }
  {
    // Attention alone: decode rows at batch 1 and 64 over 128- and 1024-token contexts, and prefills
    // of 128 to 1024 tokens (one sequence; how the time grows with the length tells a chain of
    // dependent key tiles from a shortage of throughput), on a paged cache filled with random keys
    // and values.
    const int64_t heads = c.num_heads, kvh = c.num_kv_heads, D = c.head_dim, G = c.heads_per_kv();
    constexpr int64_t kBlock = 16;
    nlohmann::json rows = nlohmann::json::array();
    struct Case {
      const char* name;
      int64_t batch, context;
      bool prefill;
    };
    // Decode at 128-token contexts (the engine figures' shape) and longer ones, where few rows leave
    // the GPU to a few blocks unless their keys are split (each decode case also times every split
    // count, for DecodeSplitCount's rule).
    const Case cases[] = {{"decode", 1, 128, false},   {"decode", 64, 128, false},  {"decode", 256, 128, false},
                          {"decode", 1, 256, false},   {"decode", 1, 512, false},   {"decode", 1, 1024, false},
                          {"decode", 1, 4096, false},  {"decode", 1, 16384, false}, {"decode", 4, 1024, false},
                          {"decode", 4, 4096, false},  {"decode", 16, 1024, false}, {"decode", 16, 4096, false},
                          {"decode", 64, 1024, false}, {"decode", 64, 4096, false}, {"prefill", 1, 128, true},
                          {"prefill", 1, 256, true},   {"prefill", 1, 512, true},   {"prefill", 1, 1024, true}};
    for (const Case& k : cases) {
      const int64_t blocks_per_seq = (k.context + kBlock - 1) / kBlock, blocks = k.batch * blocks_per_seq;
      const int64_t kv_elems = blocks * kBlock * kvh * D;
      gpu::DeviceBuffer<bf16> keys(kv_elems), values(kv_elems);
      gpu::FillNormal(keys.get(), kv_elems, 9, 3, 0.f, 1.f, s);
      gpu::FillNormal(values.get(), kv_elems, 9, 4, 0.f, 1.f, s);
      std::vector<int32_t> tables(blocks), row_seq, row_pos;
      for (int64_t b = 0; b < blocks; ++b) tables[b] = static_cast<int32_t>(b);
      std::vector<int64_t> chunk_rows;
      for (int64_t b = 0; b < k.batch; ++b) {
        const int64_t n = k.prefill ? k.context : 1;
        chunk_rows.push_back(n);
        for (int64_t i = 0; i < n; ++i) {
          row_seq.push_back(static_cast<int32_t>(b));
          row_pos.push_back(static_cast<int32_t>(k.context - n + i));
        }
      }
      const int64_t R = static_cast<int64_t>(row_seq.size());
      const int64_t tile_rows = gpu::AttentionTileRows(G, D);
      std::vector<int32_t> narrow, wide;
      gpu::PlanAttentionTiles(chunk_rows.data(), k.batch, tile_rows, narrow, wide);
      std::vector<int32_t> balanced = wide;  // as the engine orders them; `wide` keeps the tile order
      gpu::BalanceWideTiles(balanced, row_pos.data(), 0, kvh, D);
      std::vector<int32_t> ints = tables;
      ints.insert(ints.end(), row_seq.begin(), row_seq.end());
      ints.insert(ints.end(), row_pos.begin(), row_pos.end());
      ints.insert(ints.end(), narrow.begin(), narrow.end());
      ints.insert(ints.end(), balanced.begin(), balanced.end());
      ints.insert(ints.end(), wide.begin(), wide.end());
      gpu::DeviceBuffer<int32_t> d_ints(ints.size());
      MOE_CUDA_CHECK(cudaMemcpy(d_ints.get(), ints.data(), sizeof(int32_t) * ints.size(), cudaMemcpyHostToDevice));
      const int32_t* d_tables = d_ints.get();
      const int32_t* d_seq = d_tables + blocks;
      const int32_t* d_pos = d_seq + R;
      const int32_t* d_narrow = d_pos + R;
      const int32_t* d_balanced = d_narrow + narrow.size();
      const int32_t* d_wide = d_balanced + balanced.size();
      gpu::DeviceBuffer<bf16> qb(R * heads * D), ob(R * heads * D);
      gpu::FillNormal(qb.get(), R * heads * D, 9, 5, 0.f, 1.f, s);
      const gpu::PagedKv kv{keys.get(), values.get(), d_tables, blocks_per_seq, kBlock, kvh, D};
      const float scale = 1.f / std::sqrt(static_cast<float>(D));
      // Decode rows split over the keys as the engine splits them.
      const int64_t n_narrow = static_cast<int64_t>(narrow.size() / 2), max_keys = blocks_per_seq * kBlock;
      const int splits = gpu::DecodeSplitCount(n_narrow, kvh, D, max_keys, 0);
      gpu::DeviceBuffer<float> partial(
          std::max<size_t>(1, gpu::DecodeSplitFloats(n_narrow, heads, D, gpu::kMaxKeySplits)));
      gpu::DeviceBuffer<int32_t> counters(std::max<int64_t>(1, n_narrow * kvh));
      MOE_CUDA_CHECK(cudaMemset(counters.get(), 0, sizeof(int32_t) * counters.size()));
      const gpu::DecodeSplit split{splits, max_keys, partial.get(), counters.get()};
      auto time = [&](const int32_t* d_tiles) {
        return MedianMs(s, 3, 20, [&](int) {
          gpu::PagedAttention(qb.get(), d_seq, d_pos, d_narrow, n_narrow, 1, heads, kv, 0, scale, ob.get(), s,
                              &split);
          gpu::PagedAttention(qb.get(), d_seq, d_pos, d_tiles, wide.size() / 2, tile_rows, heads, kv, 0, scale,
                              ob.get(), s);
        });
      };
      const double ms = time(d_balanced);
      const double kv_bytes = 2.0 * 2.0 * k.batch * k.context * kvh * D;
      nlohmann::json row = {{"kind", k.name},  {"batch", k.batch}, {"context", k.context}, {"us", ms * 1e3},
                            {"kv_gbps", kv_bytes / (ms / 1e3) / 1e9}, {"decode_splits", splits}};
      std::printf("attention %-7s batch %3lld context %5lld: %8.1f us (KV %6.0f GB/s)", k.name,
                  static_cast<long long>(k.batch), static_cast<long long>(k.context), ms * 1e3,
                  kv_bytes / (ms / 1e3) / 1e9);
      if (k.prefill) {  // the tiles in their plain order, for comparison with BalanceWideTiles's
        const double plain = time(d_wide);
        row["tile_order_us"] = plain * 1e3;
        std::printf("  in tile order %8.1f us", plain * 1e3);
      } else {  // the decode rows as one-row tiles of the tensor-core kernel (max_rows 2 forces it;
                // PagedAttention takes it by itself for single rows whose keys are not split)
        const double tc = MedianMs(s, 3, 20, [&](int) {
          gpu::PagedAttention(qb.get(), d_seq, d_pos, d_narrow, n_narrow, 2, heads, kv, 0, scale, ob.get(), s);
        });
        row["tensor_core_us"] = tc * 1e3;
        std::printf("  as one-row tensor-core tiles %8.1f us", tc * 1e3);
        nlohmann::json by_splits = nlohmann::json::object();  // at each split count over blocks
        std::printf("\n    split over blocks:");
        // Splits of at least one 64-key tile of the tensor-core kernel.
        for (int n = 2; n <= gpu::kMaxKeySplits && 64 * n <= max_keys; n *= 2) {
          const gpu::DecodeSplit forced{n, max_keys, partial.get(), counters.get()};
          const double us = 1e3 * MedianMs(s, 3, 20, [&](int) {
            gpu::PagedAttention(qb.get(), d_seq, d_pos, d_narrow, n_narrow, 1, heads, kv, 0, scale, ob.get(), s,
                                &forced);
          });
          by_splits[std::to_string(n)] = us;
          std::printf(" %d: %.1f", n, us);
        }
        row["us_by_splits"] = by_splits;
      }
      std::printf("\n");
      rows.push_back(row);
    }
    out["attention"] = rows;
  }
  {
    // Sampling the next token of logits rows on the device (SampleRows): greedy, a plain draw, and
    // with top-k and top-p, at the decode batches; rows of normal(0, 3) logits.
    const int64_t V = c.vocab_size;
    constexpr int64_t kMaxRows = 256;
    std::vector<float> host(static_cast<size_t>(kMaxRows * V));
    for (size_t i = 0; i < host.size(); ++i) {  // Box-Muller from two seeded draws, one value kept
      const double u1 = 1.0 - UniformDraw(12345, 2 * i), u2 = UniformDraw(12345, 2 * i + 1);  // u1 in (0, 1]
      host[i] = static_cast<float>(3.0 * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
    gpu::DeviceBuffer<float> logits(host.size()), logprobs(kMaxRows);
    gpu::DeviceBuffer<int32_t> tokens(kMaxRows);
    gpu::DeviceBuffer<gpu::SampleRowParams> params(kMaxRows);  // sized by the struct, which grows with its fields
    MOE_CUDA_CHECK(cudaMemcpy(logits.get(), host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice));
    struct Case {
      const char* name;
      SamplingParams p;
    };
    const Case cases[] = {{"greedy", {.temperature = 0.f}},
                          {"temperature 1", {.temperature = 1.f}},
                          {"top-k 50", {.temperature = 0.8f, .top_k = 50}},
                          {"top-p 0.9", {.temperature = 1.f, .top_p = 0.9f}},
                          {"top-k 50 top-p 0.95", {.temperature = 0.8f, .top_k = 50, .top_p = 0.95f}}};
    nlohmann::json rows = nlohmann::json::array();
    for (const Case& k : cases) {
      std::vector<gpu::SampleRowParams> pp;
      for (int64_t r = 0; r < kMaxRows; ++r) {  // a seed per row
        SamplingParams p = k.p;
        p.seed = static_cast<uint64_t>(r);
        pp.push_back(gpu::ToSampleRowParams(p, 0));
      }
      MOE_CUDA_CHECK(cudaMemcpy(params.get(), pp.data(), sizeof(gpu::SampleRowParams) * pp.size(),
                                cudaMemcpyHostToDevice));
      for (int64_t B : {1, 64, 256}) {
        const double ms = MedianMs(s, 3, 20, [&](int) {
          gpu::SampleRows(logits.get(), B, V, params.get(),
                          nullptr, nullptr, tokens.get(), logprobs.get(), s);
        });
        rows.push_back({{"sampling", k.name}, {"rows", B}, {"us", ms * 1e3}});
        std::printf("sample %-20s rows %3lld: %8.1f us\n", k.name, static_cast<long long>(B), ms * 1e3);
      }
    }
    out["sampling"] = rows;
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  std::printf("copy bandwidth: %.0f GB/s\n", out["copy_bandwidth_gbps"].get<double>());
  std::fflush(stdout);
  return out;
}

}  // namespace moe
