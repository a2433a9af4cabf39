// Every CUDA kernel against the CPU implementation of the same op (worker/cpu, worker/moe), on
// random inputs rounded to bf16 first, so the only differences are the GPU's float rounding and
// its bf16 outputs. Without a CUDA device every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "coordinator/placement.h"
#include "worker/cpu/ops.h"
#include "worker/model/rope.h"
#include "worker/model/safetensors.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/router.h"
#include "worker/gpu/sample_row_params.h"
#include "worker/sampler.h"
#include "worker/token_mask.h"

namespace moe::gpu {
namespace {

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device"

// A device buffer that frees itself.
template <typename T>
class Buffer {
 public:
  explicit Buffer(size_t n) : n_(n) { MOE_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T))); }
  explicit Buffer(const std::vector<T>& host) : Buffer(host.size()) { Upload(host); }
  ~Buffer() { cudaFree(p_); }
  Buffer(const Buffer&) = delete;
  void Upload(const std::vector<T>& host) {
    MOE_CUDA_CHECK(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> h(n_);
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    MOE_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* get() { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// Random floats already representable in bf16, and their bf16 bit patterns.
std::vector<float> RandomBf16Values(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = Bf16ToF32(F32ToBf16(d(rng)));
  return v;
}

std::vector<bf16> ToBf16Host(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    __nv_bfloat16_raw raw;
    raw.x = F32ToBf16(v[i]);
    out[i] = raw;
  }
  return out;
}

std::vector<float> ToF32Host(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToF32(static_cast<__nv_bfloat16_raw>(v[i]).x);
  return out;
}

double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// bf16 keeps 8 significant bits: a single rounding is at most 2^-9 relative.
constexpr double kBf16Tol = 8e-3;

TEST(GpuKernelsTest, EmbeddingAndConversions) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 50, H = 72, T = 9;
  std::vector<float> table = RandomBf16Values(V * H, 1);
  std::vector<int32_t> ids = {3, 0, 49, 3, 17, 8, 8, 1, 30};
  Buffer<bf16> d_table(ToBf16Host(table));
  Buffer<int32_t> d_ids(ids);
  Buffer<float> d_out(T * H);
  EmbeddingGather(d_table.get(), d_ids.get(), T, H, d_out.get(), nullptr);
  std::vector<float> out = d_out.Download();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) ASSERT_EQ(out[t * H + h], table[ids[t] * H + h]);
  Buffer<bf16> d_back(T * H);
  ToBf16(d_out.get(), T * H, d_back.get(), nullptr);
  Buffer<float> d_f(T * H);
  ToF32(d_back.get(), T * H, d_f.get(), nullptr);
  EXPECT_EQ(d_f.Download(), out);  // bf16-representable values survive the round trip
}

TEST(GpuKernelsTest, AddRmsNormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t H : {64, 4096, 6144 + 8}) {
    const int64_t T = 5;
    std::vector<float> x = RandomBf16Values(T * H, 2), delta = RandomBf16Values(T * H, 3);
    std::vector<float> w = RandomBf16Values(H, 4, 0.1f);
    for (auto& v : w) v = Bf16ToF32(F32ToBf16(1.f + v));
    Buffer<float> d_x(x), d_delta(delta);
    Buffer<bf16> d_w(ToBf16Host(w)), d_out(T * H);
    AddRmsNorm(d_x.get(), d_delta.get(), d_w.get(), T, H, 1e-5f, d_out.get(), nullptr);
    std::vector<float> sum(T * H), ref(T * H);
    for (int64_t i = 0; i < T * H; ++i) sum[i] = x[i] + delta[i];
    cpu::RmsNorm(sum.data(), T, H, w.data(), 1e-5, ref.data());
    EXPECT_LT(RelErr(d_x.Download(), sum), 1e-7) << H;
    EXPECT_LT(RelErr(ToF32Host(d_out.Download()), ref), kBf16Tol) << H;
  }
}

TEST(GpuKernelsTest, RopeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 7, heads = 8, D = 128;
  std::vector<float> x = RandomBf16Values(T * heads * D, 5);
  std::vector<int32_t> pos = {0, 1, 2, 100, 4095, 32767, 12};
  std::vector<int64_t> pos64(pos.begin(), pos.end());
  const std::vector<double> inv = RopeInvFreq(D, 1e6);
  Buffer<bf16> d_x(ToBf16Host(x));
  Buffer<int32_t> d_pos(pos);
  Buffer<double> d_inv(inv);
  Rope(d_x.get(), d_pos.get(), T, heads, D, d_inv.get(), nullptr);
  cpu::ApplyRope(x.data(), T, heads, D, pos64.data(), inv);
  EXPECT_LT(RelErr(ToF32Host(d_x.Download()), x), kBf16Tol);
}

TEST(GpuKernelsTest, SwiGluMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // 16-byte vectors (within one round of a thread's loads, and over two rounds), element by element.
  for (const int64_t I : {1000, 1001, 14336, 20488}) {
    const int64_t M = 6;
    std::vector<float> gu = RandomBf16Values(M * 2 * I, 6, 2.f), ref(M * I);
    Buffer<bf16> d_gu(ToBf16Host(gu)), d_out(M * I);
    SwiGlu(d_gu.get(), M, I, d_out.get(), nullptr);
    cpu::SwiGlu(gu.data(), M, I, ref.data());
    EXPECT_LT(RelErr(ToF32Host(d_out.Download()), ref), kBf16Tol) << "I " << I;
  }
}

// On the padded experts' rows: each expert's first rows computed, the padding left as it was.
TEST(GpuKernelsTest, SwiGluPaddedComputesOnlyTheExpertsRows) {
  SKIP_WITHOUT_GPU();
  const int64_t E = 3, P = 4, I = 1024, M = E * P;
  const std::vector<int32_t> offsets = {0, 2, 2, 6};  // 2, 0 and 4 rows
  std::vector<float> gu = RandomBf16Values(M * 2 * I, 8, 2.f), ref(M * I);
  const std::vector<float> before = RandomBf16Values(M * I, 9);
  Buffer<bf16> d_gu(ToBf16Host(gu)), d_out(ToBf16Host(before));
  Buffer<int32_t> d_offsets(offsets);
  SwiGluPadded(d_gu.get(), d_offsets.get(), E, P, I, d_out.get(), nullptr);
  cpu::SwiGlu(gu.data(), M, I, ref.data());
  const std::vector<float> got = ToF32Host(d_out.Download());
  for (int64_t m = 0; m < M; ++m) {
    const int64_t e = m / P;
    const bool real = m % P < offsets[e + 1] - offsets[e];
    const std::vector<float> row(got.begin() + m * I, got.begin() + (m + 1) * I);
    const std::vector<float> want(real ? ref.begin() + m * I : before.begin() + m * I,
                                  real ? ref.begin() + (m + 1) * I : before.begin() + (m + 1) * I);
    if (real) {
      EXPECT_LT(RelErr(row, want), kBf16Tol) << "row " << m;
    } else {
      EXPECT_EQ(row, want) << "padding row " << m;
    }
  }
}

TEST(GpuKernelsTest, RouterTopKMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (auto [E, k] : std::vector<std::pair<int64_t, int64_t>>{{8, 2}, {16, 4}, {3, 1}, {64, 6}}) {
    const int64_t T = 300;
    std::vector<float> logits = RandomBf16Values(T * E, 7);
    Buffer<float> d_logits(logits), d_w(T * k);
    Buffer<int32_t> d_e(T * k);
    RouterTopK(d_logits.get(), T, E, k, d_e.get(), d_w.get(), nullptr);
    Routing ref = RouteTopK(logits.data(), T, E, k);
    EXPECT_EQ(d_e.Download(), ref.expert) << E;
    EXPECT_LT(RelErr(d_w.Download(), ref.weight), 1e-6) << E;
  }
}

TEST(GpuKernelsTest, GatherAndCombineMatchCpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t H : {64, 66}) {
    const int64_t T = 10, k = 2;
    std::vector<float> x = RandomBf16Values(T * H, 8);
    std::vector<int32_t> src(T * k);
    for (int64_t i = 0; i < T * k; ++i) src[i] = static_cast<int32_t>((i * 7) % T);
    Buffer<bf16> d_x(ToBf16Host(x)), d_g(T * k * H);
    Buffer<int32_t> d_src(src);
    GatherRows(d_x.get(), d_src.get(), T * k, H, d_g.get(), nullptr);
    std::vector<float> g = ToF32Host(d_g.Download());
    for (int64_t r = 0; r < T * k; ++r)
      for (int64_t h = 0; h < H; ++h) ASSERT_EQ(g[r * H + h], x[src[r] * H + h]);
    // With a count on the device (R only a bound): the rows past it are not written, nor their
    // (stale) source indices read.
    {
      const int32_t count = 7;
      std::vector<int32_t> stale = src;
      for (int64_t i = count; i < T * k; ++i) stale[i] = 1 << 30;  // out of range: must not be read
      Buffer<int32_t> d_stale(stale), d_count(std::vector<int32_t>{count});
      Buffer<bf16> d_h(ToBf16Host(std::vector<float>(static_cast<size_t>(T * k * H), -3.f)));
      GatherRows(d_x.get(), d_stale.get(), T * k, H, d_h.get(), nullptr, d_count.get());
      std::vector<float> h = ToF32Host(d_h.Download());
      for (int64_t r = 0; r < T * k; ++r)
        for (int64_t c = 0; c < H; ++c) ASSERT_EQ(h[r * H + c], r < count ? x[src[r] * H + c] : -3.f) << r;
    }
    // Combine: position = a permutation of the gathered rows, weights random.
    std::vector<int32_t> position(T * k);
    std::iota(position.begin(), position.end(), 0);
    std::shuffle(position.begin(), position.end(), std::mt19937(9));
    std::vector<float> w = RandomBf16Values(T * k, 10), residual = RandomBf16Values(T * H, 11), ref = residual;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        float acc = 0.f;
        for (int64_t s = 0; s < k; ++s) acc += w[t * k + s] * g[position[t * k + s] * H + h];
        ref[t * H + h] += acc;
      }
    Buffer<int32_t> d_pos(position);
    Buffer<float> d_w(w), d_res(residual);
    CombineAdd(d_g.get(), d_pos.get(), d_w.get(), T, k, H, d_res.get(), nullptr);
    EXPECT_LT(RelErr(d_res.Download(), ref), 1e-6);
    // The combine with the next norm fused: the same residual bit for bit, and its RMSNorm.
    std::vector<float> nw = RandomBf16Values(H, 12, 0.1f);
    for (auto& v : nw) v = Bf16ToF32(F32ToBf16(1.f + v));
    Buffer<float> d_res2(residual);
    Buffer<bf16> d_nw(ToBf16Host(nw)), d_normed(T * H);
    CombineAddRmsNorm(d_g.get(), d_pos.get(), d_w.get(), T, k, H, d_res2.get(), d_nw.get(), 1e-5f, d_normed.get(),
                      nullptr);
    EXPECT_EQ(d_res2.Download(), d_res.Download());
    std::vector<float> normed(T * H);
    cpu::RmsNorm(ref.data(), T, H, nw.data(), 1e-5, normed.data());
    EXPECT_LT(RelErr(ToF32Host(d_normed.Download()), normed), kBf16Tol);
  }
}

struct AttnCase {
  int64_t heads, kv_heads, D, block_size, window;
};
std::string Describe(const AttnCase& c) {
  return "heads " + std::to_string(c.heads) + " kv " + std::to_string(c.kv_heads) + " D " + std::to_string(c.D) +
         " window " + std::to_string(c.window);
}

// The ids 0 .. pool - 1 of a KV block pool in a seeded random order, so that block tables do not
// follow the positions.
std::vector<int32_t> ShuffledBlocks(int64_t pool, uint32_t seed) {
  std::vector<int32_t> blocks(pool);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(seed));
  return blocks;
}

// Several sequences of different lengths in a shuffled block pool; query rows include whole
// prefills and single decode positions. Reference: cpu::AttendOne over the same bf16 values.
TEST(GpuKernelsTest, PagedAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const AttnCase& c : {AttnCase{32, 8, 128, 16, 0}, AttnCase{8, 2, 64, 4, 0}, AttnCase{6, 2, 32, 16, 5},
                            AttnCase{4, 4, 96, 8, 0}, AttnCase{8, 1, 128, 16, 33}}) {
    const std::vector<int64_t> lens = {1, 17, 130, 64};
    const int64_t S = static_cast<int64_t>(lens.size()), width = c.kv_heads * c.D;
    const int64_t max_blocks = (130 + c.block_size - 1) / c.block_size, pool = S * max_blocks;
    const std::vector<int32_t> blocks = ShuffledBlocks(pool, 12);
    // Rows: every position of every sequence.
    std::vector<int32_t> row_seq, row_pos;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t p = 0; p < lens[s]; ++p) {
        row_seq.push_back(static_cast<int32_t>(s));
        row_pos.push_back(static_cast<int32_t>(p));
      }
    const int64_t rows = static_cast<int64_t>(row_seq.size());
    std::vector<float> q = RandomBf16Values(rows * c.heads * c.D, 13), k = RandomBf16Values(rows * width, 14),
                       v = RandomBf16Values(rows * width, 15);
    Buffer<bf16> d_q(ToBf16Host(q)), d_k(ToBf16Host(k)), d_v(ToBf16Host(v));
    Buffer<bf16> d_keys(pool * c.block_size * width), d_values(pool * c.block_size * width),
        d_out(rows * c.heads * c.D);
    Buffer<int32_t> d_tables(blocks), d_seq(row_seq), d_pos(row_pos);
    PagedKv kv{d_keys.get(), d_values.get(), d_tables.get(), max_blocks, c.block_size, c.kv_heads, c.D};
    WriteKv(d_k.get(), d_v.get(), d_seq.get(), d_pos.get(), rows, kv, nullptr);
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    // Whole sequences as prefill tiles (the single-row sequence goes to the decode kernel), then
    // every row again as its own decode tile: both kernels must give the reference.
    const int64_t max_rows = AttentionTileRows(c.heads / c.kv_heads, c.D);
    std::vector<int32_t> narrow, wide;
    PlanAttentionTiles(lens.data(), S, max_rows, narrow, wide);
    EXPECT_EQ(narrow.size(), 2u);  // the 1-row sequence
    Buffer<int32_t> d_narrow(narrow), d_wide(wide);
    PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_narrow.get(), narrow.size() / 2, 1, c.heads, kv, c.window,
                   scale, d_out.get(), nullptr);
    PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_wide.get(), wide.size() / 2, max_rows, c.heads, kv,
                   c.window, scale, d_out.get(), nullptr);
    std::vector<float> out = ToF32Host(d_out.Download()), ref(out.size());
    {
      // The tiles in the engine's order (BalanceWideTiles, heaviest first): the same bits.
      std::vector<int32_t> balanced = wide;
      BalanceWideTiles(balanced, row_pos.data(), c.window, c.kv_heads, c.D);
      Buffer<int32_t> d_balanced(balanced);
      Buffer<bf16> d_out_b(rows * c.heads * c.D);
      PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_narrow.get(), narrow.size() / 2, 1, c.heads, kv,
                     c.window, scale, d_out_b.get(), nullptr);
      PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_balanced.get(), balanced.size() / 2, max_rows, c.heads,
                     kv, c.window, scale, d_out_b.get(), nullptr);
      EXPECT_TRUE(ToF32Host(d_out_b.Download()) == out) << "balanced tile order: heads " << c.heads << " D " << c.D;
    }
    std::vector<int32_t> singles;
    for (int64_t r = 0; r < rows; ++r) singles.insert(singles.end(), {static_cast<int32_t>(r), 1});
    Buffer<int32_t> d_singles(singles);
    Buffer<bf16> d_out1(rows * c.heads * c.D);
    PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_singles.get(), rows, 1, c.heads, kv, c.window, scale,
                   d_out1.get(), nullptr);
    std::vector<float> out1 = ToF32Host(d_out1.Download());
    std::vector<int64_t> first_row(S, 0);
    for (int64_t s = 1; s < S; ++s) first_row[s] = first_row[s - 1] + lens[s - 1];
    std::vector<float> scratch(200);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = row_seq[r], p = row_pos[r];
      const int64_t lo = c.window > 0 ? std::max<int64_t>(0, p - c.window + 1) : 0;
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t g = h / (c.heads / c.kv_heads);
        cpu::AttendOne(
            q.data() + (r * c.heads + h) * c.D, c.D, p - lo + 1,
            [&](int64_t j) { return k.data() + (first_row[s] + lo + j) * width + g * c.D; },
            [&](int64_t j) { return v.data() + (first_row[s] + lo + j) * width + g * c.D; }, scale, scratch.data(),
            ref.data() + (r * c.heads + h) * c.D);
      }
    }
    EXPECT_LT(RelErr(out, ref), kBf16Tol) << "tiled: heads " << c.heads << " kv " << c.kv_heads << " D " << c.D
                                          << " window " << c.window;
    EXPECT_LT(RelErr(out1, ref), kBf16Tol) << "decode: heads " << c.heads << " kv " << c.kv_heads << " D " << c.D
                                           << " window " << c.window;
    // Steps whose rows follow earlier ones (the last chunk_rows[s] positions of sequence s): decode
    // rows, and chunks continuing their sequence over one or two tiles. The tensor-core kernel
    // loads the key tiles of earlier steps before its wait: none at position 16 or 63, both buffers
    // at the decode row 129 (then the third tile), one for the chunk 100..129 (its second tile, if
    // any, none: it does not start the chunk).
    for (const std::vector<int64_t>& chunk_rows :
         {std::vector<int64_t>{1, 1, 1, 24}, std::vector<int64_t>{1, 1, 30, 1}}) {
      std::vector<int32_t> step_seq, step_pos;
      std::vector<float> step_q, step_ref;
      for (int64_t s = 0; s < S; ++s)
        for (int64_t p = lens[s] - chunk_rows[s]; p < lens[s]; ++p) {
          step_seq.push_back(static_cast<int32_t>(s));
          step_pos.push_back(static_cast<int32_t>(p));
          const int64_t r = first_row[s] + p, n = c.heads * c.D;
          step_q.insert(step_q.end(), q.begin() + r * n, q.begin() + (r + 1) * n);
          step_ref.insert(step_ref.end(), ref.begin() + r * n, ref.begin() + (r + 1) * n);
        }
      std::vector<int32_t> step_narrow, step_wide;
      PlanAttentionTiles(chunk_rows.data(), S, max_rows, step_narrow, step_wide);
      Buffer<bf16> d_step_q(ToBf16Host(step_q)), d_step_out(static_cast<int64_t>(step_q.size()));
      Buffer<int32_t> d_step_seq(step_seq), d_step_pos(step_pos), d_step_narrow(step_narrow);
      PagedAttention(d_step_q.get(), d_step_seq.get(), d_step_pos.get(), d_step_narrow.get(), step_narrow.size() / 2, 1,
                     c.heads, kv, c.window, scale, d_step_out.get(), nullptr);
      if (!step_wide.empty()) {
        Buffer<int32_t> d_step_wide(step_wide);
        PagedAttention(d_step_q.get(), d_step_seq.get(), d_step_pos.get(), d_step_wide.get(), step_wide.size() / 2,
                       max_rows, c.heads, kv, c.window, scale, d_step_out.get(), nullptr);
      }
      EXPECT_LT(RelErr(ToF32Host(d_step_out.Download()), step_ref), kBf16Tol)
          << "later rows: heads " << c.heads << " D " << c.D << " window " << c.window << " chunk of seq 3 "
          << chunk_rows[3];
    }
  }
}

// Decode attention split over the keys (DecodeSplit): long contexts in a shuffled block pool,
// every split count the launcher accepts, against cpu::AttendOne; the counters are left zero.
// Head dims 128 and 64 take the tensor-core kernel, 96 the decode kernel.
TEST(GpuKernelsTest, DecodeAttentionSplitMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const AttnCase& c : {AttnCase{32, 8, 128, 16, 0}, AttnCase{8, 1, 128, 16, 200}, AttnCase{8, 2, 64, 8, 0},
                            AttnCase{16, 2, 96, 16, 0}}) {
    SCOPED_TRACE(Describe(c));
    const std::vector<int64_t> lens = {1000, 300, 5, 129};
    const int64_t S = static_cast<int64_t>(lens.size()), width = c.kv_heads * c.D;
    const int64_t max_blocks = (1000 + c.block_size - 1) / c.block_size, pool = S * max_blocks;
    const std::vector<int32_t> blocks = ShuffledBlocks(pool, 21);
    // The cache holds every position; the query rows are the last position of each sequence.
    std::vector<int32_t> row_seq, row_pos;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t p = 0; p < lens[s]; ++p) {
        row_seq.push_back(static_cast<int32_t>(s));
        row_pos.push_back(static_cast<int32_t>(p));
      }
    const int64_t rows = static_cast<int64_t>(row_seq.size());
    std::vector<float> k = RandomBf16Values(rows * width, 22), v = RandomBf16Values(rows * width, 23);
    Buffer<bf16> d_k(ToBf16Host(k)), d_v(ToBf16Host(v));
    Buffer<bf16> d_keys(pool * c.block_size * width), d_values(pool * c.block_size * width);
    Buffer<int32_t> d_tables(blocks), d_seq(row_seq), d_pos(row_pos);
    PagedKv kv{d_keys.get(), d_values.get(), d_tables.get(), max_blocks, c.block_size, c.kv_heads, c.D};
    WriteKv(d_k.get(), d_v.get(), d_seq.get(), d_pos.get(), rows, kv, nullptr);
    std::vector<int32_t> tiles;
    std::vector<int64_t> first_row(S, 0);
    for (int64_t s = 1; s < S; ++s) first_row[s] = first_row[s - 1] + lens[s - 1];
    for (int64_t s = 0; s < S; ++s) tiles.insert(tiles.end(), {static_cast<int32_t>(first_row[s] + lens[s] - 1), 1});
    // Queries: one per tile row, placed at that row's index of a [rows, heads, D] buffer.
    std::vector<float> q = RandomBf16Values(rows * c.heads * c.D, 24);
    Buffer<bf16> d_q(ToBf16Host(q));
    Buffer<int32_t> d_tiles(tiles);
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    std::vector<float> ref(static_cast<size_t>(S * c.heads * c.D)), scratch(1000);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t r = first_row[s] + lens[s] - 1, p = lens[s] - 1;
      const int64_t lo = c.window > 0 ? std::max<int64_t>(0, p - c.window + 1) : 0;
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t g = h / (c.heads / c.kv_heads);
        cpu::AttendOne(
            q.data() + (r * c.heads + h) * c.D, c.D, p - lo + 1,
            [&](int64_t j) { return k.data() + (first_row[s] + lo + j) * width + g * c.D; },
            [&](int64_t j) { return v.data() + (first_row[s] + lo + j) * width + g * c.D; }, scale, scratch.data(),
            ref.data() + (s * c.heads + h) * c.D);
      }
    }
    const int64_t max_keys = max_blocks * c.block_size;
    for (int splits : {1, 2, 3, 8, 16, 64, DecodeSplitCount(S, c.kv_heads, c.D, max_keys, c.window)}) {
      Buffer<float> d_partial(std::max<size_t>(1, DecodeSplitFloats(S, c.heads, c.D, splits)));
      std::vector<int32_t> zeros(S * c.kv_heads, 0);
      Buffer<int32_t> d_counters(zeros);
      Buffer<bf16> d_out(rows * c.heads * c.D);
      const DecodeSplit split{splits, max_keys, d_partial.get(), d_counters.get()};
      for (int pass = 0; pass < 2; ++pass) {  // the second pass reuses the counters
        PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_tiles.get(), S, 1, c.heads, kv, c.window, scale,
                       d_out.get(), nullptr, &split);
      }
      const std::vector<float> all = ToF32Host(d_out.Download());
      std::vector<float> out;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t r = first_row[s] + lens[s] - 1;
        out.insert(out.end(), all.begin() + r * c.heads * c.D, all.begin() + (r + 1) * c.heads * c.D);
      }
      EXPECT_LT(RelErr(out, ref), kBf16Tol) << "splits " << splits;
      EXPECT_EQ(d_counters.Download(), zeros) << "splits " << splits;
    }
  }
}

// The fused QKV step: q roped into its own buffer, k roped and v copied into the paged cache, equal
// to RoPE on the CPU and to WriteKv of the CPU-roped keys.
TEST(GpuKernelsTest, QkvRopeKvMatchesRopeAndWriteKv) {
  SKIP_WITHOUT_GPU();
  for (const int64_t D : {64, 6}) {  // pairs as bf16x2 (head_dim % 4 == 0), and one at a time
  SCOPED_TRACE(D);
  const int64_t T = 6, heads = 8, kvh = 2, block = 4, width = (heads + 2 * kvh) * D;
  std::vector<float> qkv = RandomBf16Values(T * width, 31);
  std::vector<int32_t> seq = {0, 0, 0, 1, 1, 0}, pos = {0, 1, 2, 0, 1, 9};
  std::vector<int32_t> tables = {3, 0, 2, 1, 5, 4};  // [2 seqs, 3 blocks]
  const std::vector<double> inv = RopeInvFreq(D, 1e6);
  Buffer<bf16> d_qkv(ToBf16Host(qkv)), d_q(T * heads * D), d_keys(6 * block * kvh * D), d_values(6 * block * kvh * D);
  MOE_CUDA_CHECK(cudaMemset(d_keys.get(), 0, 6 * block * kvh * D * sizeof(bf16)));
  MOE_CUDA_CHECK(cudaMemset(d_values.get(), 0, 6 * block * kvh * D * sizeof(bf16)));
  Buffer<int32_t> d_seq(seq), d_pos(pos), d_tables(tables);
  Buffer<double> d_inv(inv);
  PagedKv kv{d_keys.get(), d_values.get(), d_tables.get(), 3, block, kvh, D};
  QkvRopeKv(d_qkv.get(), d_seq.get(), d_pos.get(), T, heads, d_inv.get(), kv, d_q.get(), nullptr);
  std::vector<float> q(T * heads * D), k(T * kvh * D), v(T * kvh * D);
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(qkv.begin() + t * width, heads * D, q.begin() + t * heads * D);
    std::copy_n(qkv.begin() + t * width + heads * D, kvh * D, k.begin() + t * kvh * D);
    std::copy_n(qkv.begin() + t * width + (heads + kvh) * D, kvh * D, v.begin() + t * kvh * D);
  }
  std::vector<int64_t> pos64(pos.begin(), pos.end());
  cpu::ApplyRope(q.data(), T, heads, D, pos64.data(), inv);
  cpu::ApplyRope(k.data(), T, kvh, D, pos64.data(), inv);
  EXPECT_LT(RelErr(ToF32Host(d_q.Download()), q), kBf16Tol);
  std::vector<float> keys = ToF32Host(d_keys.Download()), values = ToF32Host(d_values.Download());
  std::vector<float> got_k, got_v;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = tables[seq[t] * 3 + pos[t] / block] * block + pos[t] % block;
    got_k.insert(got_k.end(), keys.begin() + slot * kvh * D, keys.begin() + (slot + 1) * kvh * D);
    got_v.insert(got_v.end(), values.begin() + slot * kvh * D, values.begin() + (slot + 1) * kvh * D);
  }
  EXPECT_LT(RelErr(got_k, k), kBf16Tol);
  EXPECT_EQ(got_v, v);  // copied bit for bit
  }
}

// RouteAndGroup against the CPU: the same routing as RouteTopK, the same stable layout as
// BuildDispatchLayout for one rank holding every expert, and the counts accumulated. Sizes take
// both blocks (256 threads up to 256 slots, 1024 above), cross the large block's 1024-slot rounds
// and reach 256 experts.
// The fused decode step (DecodeRopeAttention) against the two kernels it replaces, QkvRopeKv then
// PagedAttention of one-row tiles (each tested against the CPU above): the same output and cache
// bits. The caches start with random values everywhere, so a stale key at the row's own slot
// would show; contexts from 1 to 200 keys (no, one, two and three key tiles of earlier steps).
TEST(GpuKernelsTest, DecodeRopeAttentionMatchesQkvRopeKvThenPagedAttention) {
  SKIP_WITHOUT_GPU();
  for (const AttnCase& c : {AttnCase{32, 8, 128, 16, 0}, AttnCase{8, 1, 128, 16, 70}, AttnCase{16, 2, 64, 8, 0},
                            AttnCase{8, 4, 64, 4, 0}}) {
    SCOPED_TRACE(Describe(c));
    const std::vector<int32_t> lens = {1, 17, 64, 65, 129, 200};
    const int64_t S = static_cast<int64_t>(lens.size()), width = c.kv_heads * c.D;
    const int64_t qkv_width = (c.heads + 2 * c.kv_heads) * c.D;
    const int64_t max_blocks = (200 + c.block_size - 1) / c.block_size, pool = S * max_blocks;
    const std::vector<int32_t> blocks = ShuffledBlocks(pool, 41);
    std::vector<int32_t> row_seq(S), row_pos(S), tiles;
    for (int64_t s = 0; s < S; ++s) {
      row_seq[s] = static_cast<int32_t>(s);
      row_pos[s] = lens[s] - 1;
      tiles.insert(tiles.end(), {static_cast<int32_t>(s), 1});
    }
    const std::vector<double> inv = RopeInvFreq(c.D, 1e6);
    const std::vector<bf16> cache_keys = ToBf16Host(RandomBf16Values(pool * c.block_size * width, 42));
    const std::vector<bf16> cache_values = ToBf16Host(RandomBf16Values(pool * c.block_size * width, 43));
    Buffer<bf16> d_qkv(ToBf16Host(RandomBf16Values(S * qkv_width, 44))), d_q(S * c.heads * c.D);
    Buffer<bf16> keys_a(cache_keys), values_a(cache_values), keys_b(cache_keys), values_b(cache_values);
    Buffer<bf16> out_a(S * c.heads * c.D), out_b(S * c.heads * c.D);
    Buffer<int32_t> d_tables(blocks), d_seq(row_seq), d_pos(row_pos), d_tiles(tiles);
    Buffer<double> d_inv(inv);
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    PagedKv kv_a{keys_a.get(), values_a.get(), d_tables.get(), max_blocks, c.block_size, c.kv_heads, c.D};
    PagedKv kv_b{keys_b.get(), values_b.get(), d_tables.get(), max_blocks, c.block_size, c.kv_heads, c.D};
    auto same_bits = [](const Buffer<bf16>& a, const Buffer<bf16>& b) {
      const std::vector<bf16> x = a.Download(), y = b.Download();
      return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(bf16)) == 0;
    };
    // Unsplit, and split over blocks (the own key's block writes it; the others rotate the queries
    // only): the same bits as the two kernels with the same split.
    const int64_t max_keys = max_blocks * c.block_size;
    for (int splits : {1, 2, 3, 4, DecodeSplitCount(S, c.kv_heads, c.D, max_keys, c.window)}) {
      SCOPED_TRACE(testing::Message() << "splits " << splits);
      Buffer<float> d_partial(std::max<size_t>(1, DecodeSplitFloats(S, c.heads, c.D, splits)));
      const std::vector<int32_t> zeros(S * c.kv_heads, 0);
      Buffer<int32_t> d_counters(zeros);
      const DecodeSplit split{splits, max_keys, d_partial.get(), d_counters.get()};
      QkvRopeKv(d_qkv.get(), d_seq.get(), d_pos.get(), S, c.heads, d_inv.get(), kv_a, d_q.get(), nullptr);
      PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), d_tiles.get(), S, 1, c.heads, kv_a, c.window, scale,
                     out_a.get(), nullptr, &split);
      ASSERT_TRUE(DecodeRopeAttention(d_qkv.get(), d_seq.get(), d_pos.get(), d_tiles.get(), S, c.heads, d_inv.get(),
                                      kv_b, c.window, scale, out_b.get(), nullptr, &split));
      EXPECT_TRUE(same_bits(out_a, out_b)) << "attention output";
      EXPECT_TRUE(same_bits(keys_a, keys_b)) << "key cache";
      EXPECT_TRUE(same_bits(values_a, values_b)) << "value cache";
      EXPECT_EQ(d_counters.Download(), zeros);
    }
  }
  // A head dim the tensor-core kernel does not take.
  PagedKv kv96{nullptr, nullptr, nullptr, 1, 16, 2, 96};
  EXPECT_FALSE(DecodeRopeAttention(nullptr, nullptr, nullptr, nullptr, 1, 8, nullptr, kv96, 0, 1.f, nullptr, nullptr));
}

TEST(GpuKernelsTest, RouteAndGroupMatchesCpuLayout) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t T, E, k;
  };
  // Decode-sized steps (1 x 2 ... 17 x 2, 4 x 6 of 64 experts, 3 x 8 of 256, 7 x 1 of 3), the small
  // block full (128 x 2), the large block's smallest step (257 x 1) and steps over several of its
  // 1024-slot rounds.
  for (const Case& c : {Case{1, 8, 2}, Case{5, 8, 2}, Case{16, 8, 2}, Case{4, 64, 6}, Case{3, 256, 8}, Case{7, 3, 1},
                        Case{17, 8, 2}, Case{128, 8, 2}, Case{257, 3, 1}, Case{300, 8, 2}, Case{1500, 8, 2},
                        Case{700, 16, 4}, Case{64, 3, 1}, Case{400, 64, 6}, Case{90, 256, 8}}) {
    const int64_t n = c.T * c.k;
    std::vector<float> logits = RandomBf16Values(c.T * c.E, static_cast<uint32_t>(40 + c.T + c.E));
    Buffer<float> d_logits(logits), d_w(n);
    Buffer<int32_t> d_e(n), d_src(n), d_pos(n), d_off(c.E + 1);
    std::vector<int32_t> accum(c.E, 3);
    Buffer<int32_t> d_accum(accum);
    Buffer<int32_t> d_active(c.E);
    RouteAndGroup(d_logits.get(), c.T, c.E, c.k, d_e.get(), d_w.get(), d_src.get(), d_pos.get(),
                  d_off.get(), d_active.get(), d_accum.get(), nullptr);
    const Routing ref = RouteTopK(logits.data(), c.T, c.E, c.k);
    ASSERT_EQ(d_e.Download(), ref.expert) << "T " << c.T << " E " << c.E;
    EXPECT_LT(RelErr(d_w.Download(), ref.weight), 1e-6);
    const PlacementPlan plan = PlacementPlan::Make(1, c.E, 1).value();
    const DispatchLayout layout = BuildDispatchLayout(ref, plan, 0, 0);
    std::vector<int32_t> want_src(n), want_pos(n), want_off(c.E + 1, 0), want_accum(c.E);
    for (int64_t p = 0; p < n; ++p) want_src[p] = static_cast<int32_t>(layout.order[p] / c.k);
    for (int64_t i = 0; i < n; ++i) want_pos[i] = static_cast<int32_t>(layout.position[i]);
    for (int64_t e = 0; e < c.E; ++e) {
      want_off[e + 1] = want_off[e] + static_cast<int32_t>(layout.send_counts[e]);
      want_accum[e] = 3 + static_cast<int32_t>(layout.send_counts[e]);
    }
    EXPECT_EQ(d_src.Download(), want_src) << "T " << c.T << " E " << c.E;
    EXPECT_EQ(d_pos.Download(), want_pos) << "T " << c.T << " E " << c.E;
    EXPECT_EQ(d_off.Download(), want_off) << "T " << c.T << " E " << c.E;
    EXPECT_EQ(d_accum.Download(), want_accum) << "T " << c.T << " E " << c.E;
    std::vector<int32_t> want_active;
    for (int64_t e = 0; e < c.E; ++e) {
      if (layout.send_counts[e] > 0) want_active.push_back(static_cast<int32_t>(e));
    }
    want_active.resize(c.E, -1);
    EXPECT_EQ(d_active.Download(), want_active) << "T " << c.T << " E " << c.E;
  }
}

// The padded experts' layout against the CPU's: expert e's rows, in slot order, fill block e of P
// rows from its start; the rest of the block is left as it was; every slot finds its own token's
// row at its padded position. Rows are copied, so bit for bit.
TEST(GpuKernelsTest, GatherPaddedFillsEachExpertsBlockInSlotOrder) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t T, E, k, H;
  };
  for (const Case& c : {Case{1, 8, 2, 64}, Case{16, 8, 2, 4096}, Case{64, 8, 2, 200}, Case{33, 16, 4, 72},
                        Case{9, 3, 1, 8}}) {
    const int64_t n = c.T * c.k, P = c.T;  // a token picks an expert once: no expert gets more than T rows
    std::vector<float> logits = RandomBf16Values(c.T * c.E, static_cast<uint32_t>(7 + c.T + c.E));
    const std::vector<bf16> x = ToBf16Host(RandomBf16Values(c.T * c.H, static_cast<uint32_t>(3 + c.H)));
    constexpr uint16_t kUntouched = 0x7f7f;
    std::vector<uint16_t> want(static_cast<size_t>(c.E * P * c.H), kUntouched);
    std::vector<bf16> before(want.size());
    for (bf16& v : before) v = __nv_bfloat16_raw{kUntouched};
    Buffer<float> d_logits(logits), d_w(n);
    Buffer<int32_t> d_e(n), d_src(n), d_pos(n), d_off(c.E + 1), d_padded_pos(n);
    Buffer<bf16> d_x(x), d_out(before);
    RouteAndGroup(d_logits.get(), c.T, c.E, c.k, d_e.get(), d_w.get(), d_src.get(), d_pos.get(),
                  d_off.get(), nullptr, nullptr, nullptr);
    GatherPadded(d_x.get(), d_off.get(), d_e.get(), d_pos.get(), n, c.k, P, c.H, d_out.get(), d_padded_pos.get(),
                 nullptr);
    const Routing ref = RouteTopK(logits.data(), c.T, c.E, c.k);
    std::vector<int32_t> want_pos(n), filled(c.E, 0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t e = ref.expert[i], row = e * P + filled[e]++;
      want_pos[i] = static_cast<int32_t>(row);
      for (int64_t h = 0; h < c.H; ++h) {
        want[row * c.H + h] = static_cast<__nv_bfloat16_raw>(x[(i / c.k) * c.H + h]).x;
      }
    }
    const std::vector<bf16> out = d_out.Download();
    std::vector<uint16_t> got(out.size());
    for (size_t i = 0; i < out.size(); ++i) got[i] = static_cast<__nv_bfloat16_raw>(out[i]).x;
    EXPECT_EQ(got, want) << "T " << c.T << " E " << c.E << " k " << c.k << " H " << c.H;
    EXPECT_EQ(d_padded_pos.Download(), want_pos) << "T " << c.T << " E " << c.E;
  }
}

// The fixed-capacity exchange's kernels against the CPU, W ranks simulated on one GPU: each source
// routes and groups its rows (RouteAndGroup) and packs them (PackForExchange), each block's header
// row holding the right counts; the host moves block d of every source to destination d (what
// NcclExchange::AllToAllRows does); GroupReceived must give the CPU's order (the destination's
// experts ascending, then sources, then slots); the rows return through ScatterRows and the
// mirrored blocks, and every slot must find its own row at combine_pos. Rows are bit patterns
// naming (source, token, column); the experts are the identity.
TEST(GpuKernelsTest, ExchangeKernelsRoundTripRows) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int W;
    int64_t E, k;
    std::vector<int64_t> T;  // rows per source
  };
  const int64_t H = 32;  // the smallest row the counts of 8 experts fit (ExchangeHeaderFits)
  for (const Case& c : {Case{2, 8, 2, {5, 3}}, Case{2, 8, 2, {64, 0}}, Case{3, 8, 2, {7, 1, 12}},
                        Case{4, 8, 2, {1, 9, 4, 0}}, Case{8, 8, 2, {3, 3, 3, 3, 3, 3, 3, 3}}}) {
    const int W = c.W;
    const PlacementPlan plan = PlacementPlan::Make(1, c.E, W).value();
    std::vector<int32_t> owner(c.E);
    int64_t most = 1;
    for (int64_t e = 0; e < c.E; ++e) owner[e] = plan.replicas(0, e)[0];
    for (int d = 0; d < W; ++d) most = std::max<int64_t>(most, plan.experts_on_rank(0, d).size());
    const int64_t peak = *std::max_element(c.T.begin(), c.T.end());
    const int64_t cap = peak * std::min(c.k, most), block = cap + 1;  // + the header row
    auto encode = [](int s, int64_t t, int64_t col) { return static_cast<uint16_t>(((s * 64 + t) << 5) | col); };
    Buffer<int32_t> d_owner(owner);
    std::vector<std::vector<uint16_t>> sent(W);
    std::vector<std::vector<int32_t>> combine(W), experts(W);
    for (int s = 0; s < W; ++s) {
      const int64_t T = c.T[s], n = T * c.k;
      std::vector<uint16_t> x(T * H);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t col = 0; col < H; ++col) x[t * H + col] = encode(s, t, col);
      Buffer<uint16_t> d_x(x);
      Buffer<float> d_logits(RandomBf16Values(T * c.E, static_cast<uint32_t>(70 + s))), d_w(n);
      Buffer<int32_t> d_e(n), d_src(n), d_pos(n), d_off(c.E + 1), d_comb(n);
      Buffer<uint16_t> d_send(W * block * H);
      RouteAndGroup(d_logits.get(), T, c.E, c.k, d_e.get(), d_w.get(), d_src.get(), d_pos.get(),
                    d_off.get(), nullptr, nullptr, nullptr);
      PackForExchange(reinterpret_cast<const bf16*>(d_x.get()), d_src.get(), d_pos.get(), d_off.get(), d_owner.get(),
                      c.E, W, n, cap, H, reinterpret_cast<bf16*>(d_send.get()), d_comb.get(), nullptr);
      sent[s] = d_send.Download();
      combine[s] = d_comb.Download();
      experts[s] = d_e.Download();
      for (int d = 0; d < W; ++d)
        for (int64_t e = 0; e < c.E; ++e) {
          int64_t want = 0;
          for (int64_t i = 0; i < n; ++i) want += experts[s][i] == e && owner[e] == d;
          int64_t header = 0;
          std::memcpy(&header, sent[s].data() + d * block * H + 4 * e, sizeof header);
          ASSERT_EQ(header, want) << "source " << s << " dest " << d << " expert " << e;
        }
    }
    std::vector<std::vector<uint16_t>> back(W, std::vector<uint16_t>(W * block * H));
    for (int d = 0; d < W; ++d) {
      std::vector<uint16_t> recv(W * block * H);
      for (int s = 0; s < W; ++s) {
        std::copy(sent[s].begin() + d * block * H, sent[s].begin() + (d + 1) * block * H, recv.begin() + s * block * H);
      }
      // The CPU's order: (source, token) of each grouped row.
      std::vector<std::pair<int, int64_t>> want;
      std::vector<int32_t> want_off(c.E + 1, 0), want_active;
      for (int64_t e = 0; e < c.E; ++e) {
        for (int s = 0; s < W; ++s)
          for (int64_t i = 0; i < c.T[s] * c.k; ++i)
            if (experts[s][i] == e && owner[e] == d) want.push_back({s, i / c.k});
        want_off[e + 1] = static_cast<int32_t>(want.size());
        if (want_off[e + 1] > want_off[e]) want_active.push_back(static_cast<int32_t>(e));
      }
      want_active.resize(c.E, -1);
      const int64_t bound = W * cap;
      Buffer<uint16_t> d_recv(recv), d_result(bound * H), d_computed(W * block * H);
      Buffer<int32_t> d_off(c.E + 1), d_gsrc(bound), d_active(c.E);
      GroupReceived(reinterpret_cast<const bf16*>(d_recv.get()), W, c.E, cap, H, d_off.get(), d_gsrc.get(),
                    d_active.get(), nullptr);
      ASSERT_EQ(d_off.Download(), want_off) << "dest " << d;
      EXPECT_EQ(d_active.Download(), want_active) << "dest " << d;
      const std::vector<int32_t> gsrc = d_gsrc.Download();
      for (size_t g = 0; g < want.size(); ++g) {
        ASSERT_EQ(recv[gsrc[g] * H + 3], encode(want[g].first, want[g].second, 3)) << "dest " << d << " row " << g;
      }
      // Identity experts: the grouped rows, then back where they arrived.
      GatherRows(reinterpret_cast<const bf16*>(d_recv.get()), d_gsrc.get(), static_cast<int64_t>(want.size()), H,
                 reinterpret_cast<bf16*>(d_result.get()), nullptr);
      ScatterRows(reinterpret_cast<const bf16*>(d_result.get()), d_gsrc.get(), d_off.get() + c.E, bound, H,
                  reinterpret_cast<bf16*>(d_computed.get()), nullptr);
      const std::vector<uint16_t> computed = d_computed.Download();
      for (int s = 0; s < W; ++s) {
        std::copy(computed.begin() + s * block * H, computed.begin() + (s + 1) * block * H,
                  back[s].begin() + d * block * H);
      }
    }
    for (int s = 0; s < W; ++s)
      for (int64_t i = 0; i < c.T[s] * c.k; ++i)
        for (int64_t col = 0; col < H; ++col) {
          ASSERT_EQ(back[s][combine[s][i] * H + col], encode(s, i / c.k, col)) << "source " << s << " slot " << i;
        }
  }
}

// The same kernels writing into the ranks' regions themselves (PeerTargets: what PeerExchange gives
// them, here W regions of one process on one GPU): every source packs straight into each
// destination's receiving region and raises its flags there; WaitPeers passes once all sources have
// (and advances its epoch); GroupReceived on a destination's region gives the CPU's order; the rows
// return through ScatterRows into each source's region, and every slot finds its own row at
// combine_pos. Every row of a region that no source wrote keeps its fill: only real rows cross.
// Two rounds, so the second waits on epoch 2 with the flags of the first still there.
TEST(GpuKernelsTest, ExchangeKernelsWriteIntoPeerRegions) {
  SKIP_WITHOUT_GPU();
  const int64_t H = 32, E = 8, k = 2;
  const uint16_t fill = 0xFFFF;  // a NaN pattern no row carries
  for (const std::vector<int64_t>& Ts : {std::vector<int64_t>{5, 3}, std::vector<int64_t>{7, 0, 12},
                                        std::vector<int64_t>{1, 9, 4, 0}}) {
    const int W = static_cast<int>(Ts.size());
    const PlacementPlan plan = PlacementPlan::Make(1, E, W).value();
    std::vector<int32_t> owner(E);
    for (int64_t e = 0; e < E; ++e) owner[e] = plan.replicas(0, e)[0];
    int64_t most = 1;
    for (int d = 0; d < W; ++d) most = std::max<int64_t>(most, plan.experts_on_rank(0, d).size());
    const int64_t peak = *std::max_element(Ts.begin(), Ts.end());
    const int64_t cap = peak * std::min(k, most), block = cap + 1;
    auto encode = [](int s, int64_t t, int64_t col) { return static_cast<uint16_t>(((s * 64 + t) << 5) | col); };
    Buffer<int32_t> d_owner(owner);
    // Each rank's regions and flags, and the tables every rank's kernels see.
    std::vector<std::unique_ptr<Buffer<uint16_t>>> recv, returned;
    std::vector<std::unique_ptr<Buffer<uint64_t>>> flags;  // [2][W * kPeerCtas] per rank
    std::vector<bf16*> recv_ptr, ret_ptr;
    std::vector<uint64_t*> flag_ptr(2 * W);
    for (int r = 0; r < W; ++r) {
      recv.push_back(std::make_unique<Buffer<uint16_t>>(std::vector<uint16_t>(W * block * H, fill)));
      returned.push_back(std::make_unique<Buffer<uint16_t>>(std::vector<uint16_t>(W * block * H, fill)));
      flags.push_back(std::make_unique<Buffer<uint64_t>>(std::vector<uint64_t>(2 * W * kPeerCtas, 0)));
      recv_ptr.push_back(reinterpret_cast<bf16*>(recv[r]->get()));
      ret_ptr.push_back(reinterpret_cast<bf16*>(returned[r]->get()));
      flag_ptr[r] = flags[r]->get();
      flag_ptr[W + r] = flags[r]->get() + W * kPeerCtas;
    }
    Buffer<bf16*> d_recv_ptr(recv_ptr), d_ret_ptr(ret_ptr);
    Buffer<uint64_t*> d_flag_ptr(flag_ptr);
    Buffer<uint64_t> epochs(std::vector<uint64_t>(2 * W, 0));  // [rank][direction]
    auto targets = [&](int direction, int r) {
      PeerTargets t;
      t.blocks = direction == 0 ? d_recv_ptr.get() : d_ret_ptr.get();
      t.flags = d_flag_ptr.get() + direction * W;
      t.epoch = epochs.get() + 2 * r + direction;
      t.rank = r;
      t.ranks = W;
      t.block_rows = block;
      return t;
    };
    for (int round = 1; round <= 2; ++round) {
      std::vector<std::vector<int32_t>> combine(W), experts(W);
      std::vector<std::unique_ptr<Buffer<uint16_t>>> xs;
      for (int s = 0; s < W; ++s) {
        const int64_t T = Ts[s], n = T * k;
        std::vector<uint16_t> x(T * H);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t col = 0; col < H; ++col) x[t * H + col] = encode(s, t, col);
        xs.push_back(std::make_unique<Buffer<uint16_t>>(x));
        Buffer<float> d_logits(RandomBf16Values(T * E, static_cast<uint32_t>(90 * round + s))), d_w(n);
        Buffer<int32_t> d_e(n), d_src(n), d_pos(n), d_off(E + 1), d_comb(n);
        RouteAndGroup(d_logits.get(), T, E, k, d_e.get(), d_w.get(), d_src.get(), d_pos.get(), d_off.get(), nullptr,
                      nullptr, nullptr);
        PackForExchange(reinterpret_cast<const bf16*>(xs[s]->get()), d_src.get(), d_pos.get(), d_off.get(),
                        d_owner.get(), E, W, n, cap, H, nullptr, d_comb.get(), nullptr, targets(0, s));
        combine[s] = d_comb.Download();
        experts[s] = d_e.Download();
      }
      for (int d = 0; d < W; ++d) {
        WaitPeers(flags[d]->get(), W, epochs.get() + 2 * d, 10.0, nullptr);
        const std::vector<uint16_t> got = recv[d]->Download();
        // Rows that exist arrived in each source's block, the rest kept the fill (first round).
        std::vector<std::pair<int, int64_t>> want;
        std::vector<int32_t> want_off(E + 1, 0);
        for (int64_t e = 0; e < E; ++e) {
          for (int s = 0; s < W; ++s)
            for (int64_t i = 0; i < Ts[s] * k; ++i)
              if (experts[s][i] == e && owner[e] == d) want.push_back({s, i / k});
          want_off[e + 1] = static_cast<int32_t>(want.size());
        }
        if (round == 1) {
          for (int s = 0; s < W; ++s) {
            int64_t rows = 0;
            for (int64_t i = 0; i < Ts[s] * k; ++i) rows += owner[experts[s][i]] == d;
            for (int64_t r = 1 + rows; r < block; ++r) {
              ASSERT_EQ(got[(s * block + r) * H], fill) << "dest " << d << " source " << s << " row " << r;
            }
          }
        }
        const int64_t bound = W * cap;
        Buffer<int32_t> d_off(E + 1), d_gsrc(std::max<int64_t>(bound, 1));
        Buffer<uint16_t> d_result(std::max<int64_t>(bound, 1) * H);
        GroupReceived(recv_ptr[d], W, E, cap, H, d_off.get(), d_gsrc.get(), nullptr, nullptr);
        ASSERT_EQ(d_off.Download(), want_off) << "dest " << d;
        const std::vector<int32_t> gsrc = d_gsrc.Download();
        for (size_t g = 0; g < want.size(); ++g) {
          ASSERT_EQ(got[gsrc[g] * H + 3], encode(want[g].first, want[g].second, 3)) << "dest " << d << " row " << g;
        }
        GatherRows(recv_ptr[d], d_gsrc.get(), static_cast<int64_t>(want.size()), H,
                   reinterpret_cast<bf16*>(d_result.get()), nullptr);
        ScatterRows(reinterpret_cast<const bf16*>(d_result.get()), d_gsrc.get(), d_off.get() + E, bound, H, nullptr,
                    nullptr, targets(1, d));
        MOE_CUDA_CHECK(cudaDeviceSynchronize());
      }
      for (int s = 0; s < W; ++s) {
        WaitPeers(flags[s]->get() + W * kPeerCtas, W, epochs.get() + 2 * s + 1, 10.0, nullptr);
        const std::vector<uint16_t> back = returned[s]->Download();
        for (int64_t i = 0; i < Ts[s] * k; ++i)
          for (int64_t col = 0; col < H; ++col) {
            ASSERT_EQ(back[combine[s][i] * H + col], encode(s, i / k, col)) << "source " << s << " slot " << i;
          }
      }
      const std::vector<uint64_t> e = epochs.Download();
      for (uint64_t v : e) EXPECT_EQ(v, static_cast<uint64_t>(round));
    }
  }
}

// SampleRows against SampleToken and LogSoftmax on the host (PickToken): the same token always; the
// log-probability to the last bits of a float (the double sums run in another order). Greedy and
// sampled (temperature, top-k, top-p, min-p and their mixes, many seeds and steps) over rows of bf16 values
// (thousands of exact ties in a 32000-token row: the tie rules run), rows of the real vocabulary
// sizes and small ones, with ties for the max, NaN, -inf everywhere, +inf and one flat row; and
// under allowed-id masks and penalties (PickToken's `allowed` and `adjust`; AdjustRows); with the
// top alternatives TopTokens gives.
TEST(GpuKernelsTest, SampleRowsMatchSampleToken) {
  SKIP_WITHOUT_GPU();
  const float nan = std::nanf(""), inf = INFINITY;
  const std::vector<SamplingParams> params = {
      {.temperature = 0.f},
      {.temperature = 1.f},
      {.temperature = 0.7f, .top_k = 1},
      {.temperature = 0.7f, .top_k = 7},
      {.temperature = 1.3f, .top_k = 50},
      {.temperature = 1.f, .top_p = 0.5f},
      {.temperature = 0.8f, .top_p = 0.95f},
      {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f},
      {.temperature = 2.f, .top_k = 1000, .top_p = 0.3f},
      {.temperature = 0.05f, .top_p = 0.99f},
      {.temperature = 1.f, .top_p = 1e-6f},
      {.temperature = 1.f, .min_p = 0.1f},
      {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .min_p = 0.05f},
      {.temperature = 1.5f, .top_p = 0.95f, .min_p = 1.f},
  };
  for (int64_t V : {int64_t{5}, int64_t{1000}, int64_t{32000}, int64_t{32768}}) {
    const int64_t special = 6, random_rows = 24, rows = special + random_rows;
    std::vector<float> x = RandomBf16Values(rows * V, static_cast<uint32_t>(V), 3.f);
    // Row 1: a tie for the max (the lower index must win); row 2: NaN at the max's place and
    // elsewhere; row 3: nothing but -inf and NaN; row 4: two +inf; row 5: flat (every token ties).
    const auto row = [&](int64_t r) { return x.begin() + r * V; };
    const float top = *std::max_element(row(1), row(2)) + 1.f;
    row(1)[V - 1] = top;
    row(1)[V / 2] = top;
    row(2)[0] = nan;
    row(2)[V - 1] = nan;
    for (int64_t i = 0; i < V; ++i) row(3)[i] = i % 2 ? -inf : nan;
    row(4)[V / 3] = inf;
    row(4)[V - 2] = inf;
    std::fill(row(5), row(6), 0.25f);
    // Top alternatives asked for by the cases in turn.
    constexpr int32_t kTopN[4] = {0, 1, 5, kMaxSampleTop};
    // A target to score (its log-probability and rank) for every case but each fifth: on the special
    // rows a tied maximum, a NaN, an -inf, a +inf and a flat row's id; elsewhere ids spread over the row.
    const auto TargetOf = [V](int64_t r, int64_t i) -> int32_t {
      if (i % 5 == 4) return -1;
      switch (r) {
        case 1: return static_cast<int32_t>(V / 2);
        case 2: return 0;
        case 3: return static_cast<int32_t>(1 % V);
        case 4: return static_cast<int32_t>(V / 3);
        case 5: return static_cast<int32_t>(2 % V);
        default: return static_cast<int32_t>((i * 7919) % V);
      }
    };
    // Allowed-id masks: about half the ids at random; the upper half only (whole words of ones and
    // zeros; row 1's tied maxima both stay); three ids (row 4's two +inf among them); none (the
    // argmax rule's index 0 over an all -inf row).
    std::vector<TokenMask> masks(4, TokenMask(V));
    std::mt19937 bits(static_cast<uint32_t>(V));
    for (int64_t i = 0; i < V; ++i) {
      if (bits() % 2) masks[0].Ban(i);
      if (i < V / 2) masks[1].Ban(i);
    }
    masks[2].BanAll();
    for (int64_t id : {int64_t{1}, V / 3, V - 2}) masks[2].Allow(id);
    masks[3].BanAll();
    // Penalties (LogitAdjustment, one entry per id): a large bias on a few ids (the pick moves to
    // them), the repetition penalty alone on many, and every kind at once on a mix.
    std::vector<std::vector<LogitAdjustment>> adjust(3);
    for (int64_t i = 0; i < V; i += std::max<int64_t>(1, V / 7)) {
      adjust[0].push_back({.id = static_cast<int32_t>(i), .bias = 30.f});
    }
    for (int64_t i = 1; i < V; i += 3) adjust[1].push_back({.id = static_cast<int32_t>(i), .repetition = 1.7f});
    for (int64_t i = 0; i < V; i += std::max<int64_t>(1, V / 300)) {
      adjust[2].push_back({.id = static_cast<int32_t>(i), .bias = (i % 5) - 2.f, .repetition = i % 2 ? 1.3f : 1.f,
                           .frequency = 0.4f * static_cast<float>(i % 4), .presence = i % 3 ? 0.5f : 0.f});
    }
    // Every row under every parameter set, at a few steps each; the special rows and a few others
    // under every mask and every set of penalties too, and under both at once.
    struct Case {
      int64_t row;
      SamplingParams p;
      uint64_t step;
      int32_t mask = -1;
      int32_t adjust = -1;
    };
    std::vector<Case> cases;
    for (int64_t r = 0; r < rows; ++r) {
      for (size_t k = 0; k < params.size(); ++k) {
        SamplingParams p = params[k];
        p.seed = 1000 * static_cast<uint64_t>(r) + k;
        for (uint64_t step = 0; step < (r < special ? 3u : 2u); ++step) {
          cases.push_back({r, p, step + (uint64_t{1} << 33) * k});  // steps past 2^32 too
        }
        if (r >= special + 6) continue;
        for (int32_t m = 0; m < static_cast<int32_t>(masks.size()); ++m) cases.push_back({r, p, 7, m});
        for (int32_t j = 0; j < static_cast<int32_t>(adjust.size()); ++j) cases.push_back({r, p, 8, -1, j});
        cases.push_back({r, p, 9, 0, 2});
      }
    }
    const int64_t n = static_cast<int64_t>(cases.size());
    std::vector<float> in(static_cast<size_t>(n * V));
    std::vector<SampleRowParams> pp(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const Case& c = cases[i];
      std::copy(row(c.row), row(c.row) + V, in.begin() + i * V);
      pp[i] = ToSampleRowParams(c.p, c.step, c.mask, -1, kTopN[i % 4], TargetOf(c.row, i));
    }
    // The penalised rows: (case, first entry, count) each, their entries one after another.
    std::vector<int32_t> adjust_rows;
    std::vector<LogitAdjustment> entries;
    for (int64_t i = 0; i < n; ++i) {
      if (cases[i].adjust < 0) continue;
      const std::vector<LogitAdjustment>& a = adjust[static_cast<size_t>(cases[i].adjust)];
      pp[i].adjusted_row = static_cast<int32_t>(adjust_rows.size() / 3);
      adjust_rows.insert(adjust_rows.end(), {static_cast<int32_t>(i), static_cast<int32_t>(entries.size()),
                                             static_cast<int32_t>(a.size())});
      entries.insert(entries.end(), a.begin(), a.end());
    }
    const int64_t n_adjusted = static_cast<int64_t>(adjust_rows.size() / 3);
    std::vector<int32_t> entry_words(entries.size() * 5);
    std::memcpy(entry_words.data(), entries.data(), sizeof(LogitAdjustment) * entries.size());
    std::vector<int32_t> words(pp.size() * sizeof(SampleRowParams) / sizeof(int32_t));
    std::memcpy(words.data(), pp.data(), sizeof(SampleRowParams) * pp.size());
    const int64_t mask_words = AllowedRowWords(V);
    std::vector<int32_t> mask_bits(masks.size() * mask_words);
    for (size_t m = 0; m < masks.size(); ++m) {
      ASSERT_EQ(static_cast<int64_t>(masks[m].words().size()) * 2, mask_words);
      std::memcpy(mask_bits.data() + m * mask_words, masks[m].words().data(), sizeof(int32_t) * mask_words);
    }
    Buffer<float> d_x(in), d_lp(n), d_adjusted(static_cast<size_t>(n_adjusted * V)), d_top_lp(n * kMaxSampleTop);
    Buffer<int32_t> d_top_ids(n * kMaxSampleTop);
    Buffer<float> d_target_lp(n);
    Buffer<int32_t> d_target_rank(n);
    Buffer<int32_t> d_params(words), d_tok(n), d_masks(mask_bits), d_adjust_rows(adjust_rows), d_entries(entry_words);
    AdjustRows(d_x.get(), V, d_adjust_rows.get(), n_adjusted, reinterpret_cast<const LogitAdjustment*>(d_entries.get()),
               d_adjusted.get(), nullptr);
    SampleRows(d_x.get(), n, V, reinterpret_cast<const SampleRowParams*>(d_params.get()),
               reinterpret_cast<const uint32_t*>(d_masks.get()), d_adjusted.get(), d_tok.get(), d_lp.get(), nullptr,
               d_top_ids.get(), d_top_lp.get(), kMaxSampleTop, d_target_lp.get(), d_target_rank.get());
    const std::vector<int32_t> tok = d_tok.Download();
    const std::vector<float> target_lp = d_target_lp.Download();
    const std::vector<int32_t> target_rank = d_target_rank.Download();
    const std::vector<float> lp = d_lp.Download();
    const std::vector<int32_t> top_ids = d_top_ids.Download();
    const std::vector<float> top_lp = d_top_lp.Download();
    for (int64_t i = 0; i < n; ++i) {
      const Case& c = cases[i];
      const TokenPick want =
          PickToken(std::span<const float>(&x[c.row * V], static_cast<size_t>(V)), c.p, c.step,
                    c.mask < 0 ? std::span<const uint64_t>() : masks[static_cast<size_t>(c.mask)].words(),
                    c.adjust < 0 ? std::span<const LogitAdjustment>() : adjust[static_cast<size_t>(c.adjust)]);
      EXPECT_EQ(tok[i], want.token) << "V " << V << " row " << c.row << " T " << c.p.temperature << " top_k "
                                    << c.p.top_k << " top_p " << c.p.top_p << " min_p " << c.p.min_p << " step "
                                    << c.step << " mask " << c.mask << " adjust " << c.adjust;
      if (c.mask >= 0 && c.mask < 3 && c.row != 3) {  // a mask's pick is an id it allows
        EXPECT_TRUE(masks[static_cast<size_t>(c.mask)].allowed(tok[i])) << "V " << V << " row " << c.row;
      }
      const std::vector<TokenPick> want_top =
          TopTokens(std::span<const float>(&x[c.row * V], static_cast<size_t>(V)), static_cast<uint32_t>(kTopN[i % 4]));
      for (size_t j = 0; j < want_top.size(); ++j) {
        EXPECT_EQ(top_ids[i * kMaxSampleTop + j], want_top[j].token) << "V " << V << " row " << c.row << " top " << j;
        const float got = top_lp[i * kMaxSampleTop + j], w = want_top[j].logprob;
        if (std::isinf(w)) {
          EXPECT_EQ(got, w) << "V " << V << " row " << c.row << " top " << j;
        } else {
          EXPECT_NEAR(got, w, 1e-6 * std::max(1.f, std::fabs(w))) << "V " << V << " row " << c.row << " top " << j;
        }
      }
      // The target (ScoreRow): its raw log-probability and rank, whatever the mask or penalties.
      const int32_t target = TargetOf(c.row, i);
      if (target >= 0) {
        const RowScore ws = ScoreRow(std::span<const float>(&x[c.row * V], static_cast<size_t>(V)), target, 0);
        EXPECT_EQ(target_rank[i], static_cast<int32_t>(ws.rank)) << "V " << V << " row " << c.row << " target " << target;
        if (std::isinf(ws.logprob)) {
          EXPECT_EQ(target_lp[i], ws.logprob) << "V " << V << " row " << c.row << " target " << target;
        } else {
          EXPECT_NEAR(target_lp[i], ws.logprob, 1e-6 * std::max(1.f, std::fabs(ws.logprob)))
              << "V " << V << " row " << c.row << " target " << target;
        }
      }
      if (std::isinf(want.logprob)) {  // a masked pick beside a +inf logit (row 4)
        EXPECT_EQ(lp[i], want.logprob) << "V " << V << " row " << c.row;
      } else {
        EXPECT_NEAR(lp[i], want.logprob, 1e-6 * std::max(1.f, std::fabs(want.logprob))) << "V " << V << " row " << c.row;
      }
    }
  }
}

// y = x W^T in float64 over bf16-representable inputs; rows of x picked through row_index.
std::vector<double> ReferenceLinear(const std::vector<float>& x, const std::vector<int32_t>& rows,
                                    const std::vector<float>& w, int64_t N, int64_t K) {
  std::vector<double> y(rows.size() * N);
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[rows[r] * K + k]) * w[n * K + k];
      y[r * N + n] = acc;
    }
  return y;
}

// The grouped experts in float64: SwiGLU of each grouped row's x row (row_index) through its
// group's w13 ([2I, K]: w1 rows, then w3 rows), and each grouped row of act through its group's w2
// ([K, I]); group g owns grouped rows [offsets[g], offsets[g + 1]).
std::vector<double> ReferenceSwiGlu(const std::vector<float>& x, const std::vector<int32_t>& row_index,
                                    const std::vector<int32_t>& offsets, const std::vector<std::vector<float>>& w13,
                                    int64_t I, int64_t K) {
  std::vector<double> act(static_cast<size_t>(offsets.back()) * I);
  for (size_t g = 0; g + 1 < offsets.size(); ++g)
    for (int32_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      const std::vector<double> gu = ReferenceLinear(x, {row_index[r]}, w13[g], 2 * I, K);
      for (int64_t i = 0; i < I; ++i) act[r * I + i] = gu[i] / (1 + std::exp(-gu[i])) * gu[I + i];
    }
  return act;
}
std::vector<double> ReferenceDown(const std::vector<float>& act, const std::vector<int32_t>& offsets,
                                  const std::vector<std::vector<float>>& w2, int64_t K, int64_t I) {
  std::vector<double> y(static_cast<size_t>(offsets.back()) * K);
  for (size_t g = 0; g + 1 < offsets.size(); ++g)
    for (int32_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      const std::vector<double> row = ReferenceLinear(act, {r}, w2[g], K, I);
      std::copy(row.begin(), row.end(), y.begin() + r * K);
    }
  return y;
}

// Each group's first row when group g owns counts[g] consecutive rows: [G + 1], the last the total.
std::vector<int32_t> GroupOffsets(const std::vector<int32_t>& counts) {
  std::vector<int32_t> offsets(counts.size() + 1, 0);
  for (size_t g = 0; g < counts.size(); ++g) offsets[g + 1] = offsets[g] + counts[g];
  return offsets;
}

// Random experts for the grouped tests: each group's gate/up weight w13 [2I, K] (seed seed13 + g)
// and down weight w2 [K, I] (seed seed2 + g) on the host, and on the device for the groups with
// rows; an empty group's pointers stay null (as for an expert held elsewhere).
struct RandomExperts {
  RandomExperts(const std::vector<int32_t>& counts, int64_t I, int64_t K, uint32_t seed13, uint32_t seed2) {
    const size_t G = counts.size();
    w13.resize(G);
    w2.resize(G);
    p13.assign(G, nullptr);
    p2.assign(G, nullptr);
    for (size_t g = 0; g < G; ++g) {
      w13[g] = RandomBf16Values(2 * I * K, seed13 + static_cast<uint32_t>(g), 0.08f);
      w2[g] = RandomBf16Values(K * I, seed2 + static_cast<uint32_t>(g), 0.1f);
      if (counts[g] == 0) continue;
      owned.push_back(std::make_unique<Buffer<bf16>>(ToBf16Host(w13[g])));
      p13[g] = owned.back()->get();
      owned.push_back(std::make_unique<Buffer<bf16>>(ToBf16Host(w2[g])));
      p2[g] = owned.back()->get();
    }
  }
  std::vector<std::vector<float>> w13, w2;
  std::vector<std::unique_ptr<Buffer<bf16>>> owned;
  std::vector<const bf16*> p13, p2;  // device pointers
};

double RelErrD(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

// The dense skinny GEMM in its four epilogues against float64, over row counts that fill one, several
// and partial 8-row tiles, with expected_rows both right and too small (several passes), N not a
// multiple of the 128-row CTA tile (and below 16, the router's shape), K not a multiple of the
// pipeline step (64 or 128 elements), each without and with split-K. Every output element is poisoned
// first, so an unwritten one fails.
TEST(GpuKernelsTest, SkinnyGemmMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t M, N, K, expected;
  };
  for (const Case& c : {Case{1, 40, 64, 1}, Case{3, 8, 136, 3}, Case{8, 100, 256, 8}, Case{13, 257, 520, 13},
                        Case{64, 96, 1000, 64}, Case{70, 33, 128, 64}, Case{40, 300, 4096, 5}}) {
    std::vector<float> x = RandomBf16Values(c.M * c.K, static_cast<uint32_t>(c.M + 7)),
                       w = RandomBf16Values(c.N * c.K, static_cast<uint32_t>(c.N + 9), 0.05f);
    std::vector<int32_t> rows(c.M);
    std::iota(rows.begin(), rows.end(), 0);
    const std::vector<double> ref = ReferenceLinear(x, rows, w, c.N, c.K);
    Buffer<bf16> d_x(ToBf16Host(x)), d_w(ToBf16Host(w));
    SkinnyGroups g;
    g.rows = c.M;
    g.weight = d_w.get();
    // Split-K sums added by the last CTA of each tile where one pass holds every row, else by a
    // second launch; the counters must come back zeroed.
    Buffer<int32_t> d_counters(std::vector<int32_t>(SkinnyCounters(c.N, SkinnyEpilogue::kStoreBf16, 1), 0));
    auto counters = [&](int64_t expected, int64_t rows) {
      return rows <= 8 * SkinnyTileCount(expected) ? d_counters.get() : nullptr;
    };
    for (int splits : {1, 3}) {
      Buffer<float> ws(std::max<size_t>(1, SkinnyWorkspaceFloats(c.M, c.N, SkinnyEpilogue::kStoreF32, splits)));
      const std::string what = "M " + std::to_string(c.M) + " N " + std::to_string(c.N) + " K " +
                               std::to_string(c.K) + " splits " + std::to_string(splits);
      {
        Buffer<bf16> y(ToBf16Host(std::vector<float>(c.M * c.N, NAN)));
        SkinnyGemm(d_x.get(), c.K, g, c.N, SkinnyEpilogue::kStoreBf16, y.get(), c.expected, splits, ws.get(), c.M,
                   counters(c.expected, c.M), nullptr);
        EXPECT_LT(RelErrD(ToF32Host(y.Download()), ref), kBf16Tol) << what;
      }
      {
        Buffer<float> y(std::vector<float>(c.M * c.N, NAN));
        SkinnyGemm(d_x.get(), c.K, g, c.N, SkinnyEpilogue::kStoreF32, y.get(), c.expected, splits, ws.get(), c.M,
                   counters(c.expected, c.M), nullptr);
        EXPECT_LT(RelErrD(y.Download(), ref), 1e-5) << what;
      }
      {
        std::vector<float> base = RandomBf16Values(c.M * c.N, 77);
        std::vector<double> want(ref);
        for (size_t i = 0; i < want.size(); ++i) want[i] += base[i];
        Buffer<float> y(base);
        SkinnyGemm(d_x.get(), c.K, g, c.N, SkinnyEpilogue::kAddF32, y.get(), c.expected, splits, ws.get(), c.M,
                   counters(c.expected, c.M), nullptr);
        EXPECT_LT(RelErrD(y.Download(), want), 1e-5) << what;
      }
    }
    for (int32_t v : d_counters.Download()) ASSERT_EQ(v, 0);
  }
}

// Grouped: eight experts with uneven row counts (one empty, whose weight pointer is null), rows
// gathered through an index, the SwiGLU epilogue over [2I, K] weights and the plain one, without
// and with split-K; and a row's result is the same bits whether it is computed with the others or
// alone (same split count).
TEST(GpuKernelsTest, SkinnyGemmGroupedMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t G = 8, I = 72, K = 192, T = 30;
  const std::vector<int32_t> counts = {5, 0, 12, 1, 9, 2, 17, 4};
  const std::vector<int32_t> offsets = GroupOffsets(counts);
  const int64_t R = offsets[G];
  std::vector<int32_t> row_index(R);
  for (int64_t r = 0; r < R; ++r) row_index[r] = static_cast<int32_t>((r * 11 + 3) % T);
  std::vector<float> x = RandomBf16Values(T * K, 51);
  const RandomExperts experts(counts, I, K, 60, 70);
  const auto& w13 = experts.w13;
  const auto& w2 = experts.w2;
  const auto& p13 = experts.p13;
  const auto& p2 = experts.p2;
  Buffer<bf16> d_x(ToBf16Host(x));
  Buffer<int32_t> d_off(offsets), d_idx(row_index);
  Buffer<const bf16*> d_p13(p13), d_p2(p2);
  // SwiGLU: act[r] = silu(x w1^T) * (x w3^T), w1 = rows [0, I), w3 = rows [I, 2I) of w13.
  const std::vector<double> act_ref = ReferenceSwiGlu(x, row_index, offsets, w13, I, K);
  Buffer<bf16> d_act(ToBf16Host(std::vector<float>(R * I, NAN)));
  SkinnyGroups up;
  up.count = G;
  up.offsets = d_off.get();
  up.weights = d_p13.get();
  up.row_index = d_idx.get();
  Buffer<float> ws(SkinnyWorkspaceFloats(R, std::max(I, K), SkinnyEpilogue::kSwiGluBf16, 2));
  SkinnyGemm(d_x.get(), K, up, I, SkinnyEpilogue::kSwiGluBf16, d_act.get(), 4, 1, nullptr, R, nullptr, nullptr);
  const std::vector<float> act = ToF32Host(d_act.Download());
  EXPECT_LT(RelErrD(act, act_ref), kBf16Tol);
  // The same with split-K: the same bf16 results up to float summation order.
  Buffer<bf16> d_act2(ToBf16Host(std::vector<float>(R * I, NAN)));
  SkinnyGemm(d_x.get(), K, up, I, SkinnyEpilogue::kSwiGluBf16, d_act2.get(), 4, 2, ws.get(), R, nullptr, nullptr);
  EXPECT_LT(RelErrD(ToF32Host(d_act2.Download()), act_ref), kBf16Tol);
  // Down projection of the GPU's act, plain rows.
  const std::vector<double> y_ref = ReferenceDown(act, offsets, w2, K, I);
  Buffer<bf16> d_y(ToBf16Host(std::vector<float>(R * K, NAN)));
  SkinnyGroups down;
  down.count = G;
  down.offsets = d_off.get();
  down.weights = d_p2.get();
  SkinnyGemm(d_act.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y.get(), 16, 2, ws.get(), R, nullptr, nullptr);
  const std::vector<bf16> y_all = d_y.Download();
  EXPECT_LT(RelErrD(ToF32Host(y_all), y_ref), kBf16Tol);
  // Row offsets[6] + 3 alone (group 6, one row) gives the same bits as in the batch.
  const int32_t r = offsets[6] + 3;
  std::vector<int32_t> one_off(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) one_off[g + 1] = one_off[g] + (g == 6 ? 1 : 0);
  Buffer<int32_t> d_one_off(one_off);
  Buffer<bf16> d_act1(ToBf16Host(std::vector<float>(act.begin() + r * I, act.begin() + (r + 1) * I)));
  Buffer<bf16> d_y1(K);
  down.offsets = d_one_off.get();
  SkinnyGemm(d_act1.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y1.get(), 1, 2, ws.get(), 1, nullptr, nullptr);
  const std::vector<bf16> y1 = d_y1.Download();
  for (int64_t k = 0; k < K; ++k) {
    ASSERT_EQ(static_cast<__nv_bfloat16_raw>(y1[k]).x, static_cast<__nv_bfloat16_raw>(y_all[r * K + k]).x) << k;
  }
}

// Split-K over more CTAs than two waves hold. Dense: the float epilogues against float64 with the
// splits' sums added by the last CTA of each tile and by a second launch, the bf16 one too, and a
// tile's bits the same as when it is the only tile (the same split count); 5 splits of 8 K steps
// (2 steps each) leave the fifth empty. Grouped: the SwiGLU epilogue through an active-groups list
// (3 of 8 slots busy, the others -1), as RouteAndGroup leaves it for a decode step.
TEST(GpuKernelsTest, SkinnyGemmSplitOverSeveralWaves) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 5, K = 1000;  // 8 steps of 128 k, the last partial
  const int64_t wave = static_cast<int64_t>(SkinnyResidentPerSm(M)) * DeviceSmCount();
  const int64_t N = (2 * wave / 3 + 1) * 128 + 37;  // in 3 splits: over two waves of CTAs
  std::vector<float> x = RandomBf16Values(M * K, 81), w = RandomBf16Values(N * K, 82, 0.05f);
  std::vector<int32_t> rows(M);
  std::iota(rows.begin(), rows.end(), 0);
  const std::vector<double> ref = ReferenceLinear(x, rows, w, N, K);
  Buffer<bf16> d_x(ToBf16Host(x)), d_w(ToBf16Host(w));
  SkinnyGroups g;
  g.rows = M;
  g.weight = d_w.get();
  Buffer<int32_t> d_counters(std::vector<int32_t>(SkinnyCounters(N, SkinnyEpilogue::kStoreBf16, 1), 0));
  for (int splits : {3, 5}) {
    Buffer<float> ws(SkinnyWorkspaceFloats(M, N, SkinnyEpilogue::kStoreF32, splits));
    for (int32_t* counters : {d_counters.get(), static_cast<int32_t*>(nullptr)}) {
      const std::string what = "splits " + std::to_string(splits) + (counters ? " counters" : " second launch");
      Buffer<float> y(std::vector<float>(M * N, NAN));
      SkinnyGemm(d_x.get(), K, g, N, SkinnyEpilogue::kStoreF32, y.get(), M, splits, ws.get(), M, counters, nullptr);
      EXPECT_LT(RelErrD(y.Download(), ref), 1e-5) << what;
      std::vector<float> base = RandomBf16Values(M * N, 83);
      std::vector<double> want(ref);
      for (size_t i = 0; i < want.size(); ++i) want[i] += base[i];
      Buffer<float> acc(base);
      SkinnyGemm(d_x.get(), K, g, N, SkinnyEpilogue::kAddF32, acc.get(), M, splits, ws.get(), M, counters, nullptr);
      EXPECT_LT(RelErrD(acc.Download(), want), 1e-5) << what;
    }
    Buffer<bf16> y(ToBf16Host(std::vector<float>(M * N, NAN)));
    SkinnyGemm(d_x.get(), K, g, N, SkinnyEpilogue::kStoreBf16, y.get(), M, splits, ws.get(), M, d_counters.get(),
               nullptr);
    const std::vector<bf16> all = y.Download();
    EXPECT_LT(RelErrD(ToF32Host(all), ref), kBf16Tol) << "splits " << splits;
    // The first tile alone: 128 outputs.
    const int64_t n1 = 128;
    Buffer<bf16> y1(ToBf16Host(std::vector<float>(M * n1, NAN)));
    SkinnyGemm(d_x.get(), K, g, n1, SkinnyEpilogue::kStoreBf16, y1.get(), M, splits, ws.get(), M, d_counters.get(),
               nullptr);
    const std::vector<bf16> one = y1.Download();
    for (int64_t r = 0; r < M; ++r)
      for (int64_t n = 0; n < n1; ++n) {
        ASSERT_EQ(static_cast<__nv_bfloat16_raw>(one[r * n1 + n]).x, static_cast<__nv_bfloat16_raw>(all[r * N + n]).x)
            << "splits " << splits << " row " << r << " output " << n;
      }
  }
  for (int32_t v : d_counters.Download()) ASSERT_EQ(v, 0);

  // Grouped: groups 2, 5 and 6 of 8 have rows; the active list names them, then -1.
  const int64_t G = 8, I = 64 * (wave / 3) + 40, KG = 512, T = 6;  // 2 splits: over two waves
  const std::vector<int32_t> counts = {0, 0, 3, 0, 0, 1, 2, 0};
  const std::vector<int32_t> offsets = GroupOffsets(counts);
  const int64_t R = offsets[G];
  std::vector<int32_t> row_index(R);
  for (int64_t r = 0; r < R; ++r) row_index[r] = static_cast<int32_t>((r * 5 + 1) % T);
  const std::vector<float> xg = RandomBf16Values(T * KG, 84);
  const RandomExperts experts(counts, I, KG, 90, 100);
  const std::vector<double> act_ref = ReferenceSwiGlu(xg, row_index, offsets, experts.w13, I, KG);
  Buffer<bf16> d_xg(ToBf16Host(xg));
  Buffer<int32_t> d_off(offsets), d_idx(row_index), d_active(std::vector<int32_t>{2, 5, 6, -1, -1, -1, -1, -1});
  Buffer<const bf16*> d_p13(experts.p13);
  SkinnyGroups up;
  up.count = G;
  up.offsets = d_off.get();
  up.weights = d_p13.get();
  up.row_index = d_idx.get();
  up.active = d_active.get();
  up.slots = G;
  Buffer<int32_t> d_up_counters(std::vector<int32_t>(SkinnyCounters(I, SkinnyEpilogue::kSwiGluBf16, G), 0));
  Buffer<float> ws(SkinnyWorkspaceFloats(R, I, SkinnyEpilogue::kSwiGluBf16, 2));
  for (int32_t* counters : {d_up_counters.get(), static_cast<int32_t*>(nullptr)}) {
    Buffer<bf16> d_act(ToBf16Host(std::vector<float>(R * I, NAN)));
    SkinnyGemm(d_xg.get(), KG, up, I, SkinnyEpilogue::kSwiGluBf16, d_act.get(), 3, 2, ws.get(), R, counters, nullptr);
    EXPECT_LT(RelErrD(ToF32Host(d_act.Download()), act_ref), kBf16Tol) << (counters ? "counters" : "second launch");
  }
  for (int32_t v : d_up_counters.Download()) ASSERT_EQ(v, 0);
}

// The grouped wgmma kernel (Hopper only): groups of several 128-row m-tiles, a partial one, an
// empty group with a null weight pointer, rows gathered through an index; N and K not multiples
// of the kernel's tiles (the SwiGLU epilogue over [2I, K] weights, then the plain one). Every
// output is poisoned first. A row's result has the same bits alone as among the others.
TEST(GpuKernelsTest, GroupedGemmMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  if (!GroupedGemmSupported()) GTEST_SKIP() << "the grouped wgmma kernel needs compute capability 9.0";
  const int64_t I = 136, K = 200, T = 300;
  const std::vector<int32_t> counts = {130, 0, 7, 257, 64};
  const int64_t G = static_cast<int64_t>(counts.size());
  const std::vector<int32_t> offsets = GroupOffsets(counts);
  const int64_t R = offsets[G];
  std::vector<int32_t> row_index(R);
  for (int64_t r = 0; r < R; ++r) row_index[r] = static_cast<int32_t>((r * 7 + 5) % T);
  std::vector<float> x = RandomBf16Values(T * K, 81);
  const RandomExperts experts(counts, I, K, 90, 95);
  const auto& w13 = experts.w13;
  const auto& w2 = experts.w2;
  const auto& p13 = experts.p13;
  const auto& p2 = experts.p2;
  Buffer<bf16> d_x(ToBf16Host(x));
  Buffer<int32_t> d_off(offsets), d_idx(row_index);
  Buffer<const bf16*> d_p13(p13), d_p2(p2);
  const std::vector<double> act_ref = ReferenceSwiGlu(x, row_index, offsets, w13, I, K);
  Buffer<bf16> d_act(ToBf16Host(std::vector<float>(R * I, NAN)));
  SkinnyGroups up;
  up.count = G;
  up.offsets = d_off.get();
  up.weights = d_p13.get();
  up.row_index = d_idx.get();
  // The weights' TMA descriptors (the other way the kernel reads them).
  std::vector<WeightTensorMap> m13(G), m2(G);
  BuildWeightTensorMaps(p13.data(), G, 2 * I, K, m13.data());
  BuildWeightTensorMaps(p2.data(), G, K, I, m2.data());
  Buffer<WeightTensorMap> d_m13(m13), d_m2(m2);
  const GroupedTile tiles[] = {GroupedTile::k128x128, GroupedTile::k128x256, GroupedTile::k192x128};
  for (bool tma : {false, true}) {
    for (GroupedTile tile : tiles) {  // every tile shape, each output poisoned again
      Buffer<bf16> d_act_t(ToBf16Host(std::vector<float>(R * I, NAN)));
      up.weight_maps = tma ? d_m13.get() : nullptr;
      GroupedGemm(d_x.get(), K, up, I, SkinnyEpilogue::kSwiGluBf16, d_act_t.get(), R, nullptr, tile);
      EXPECT_LT(RelErrD(ToF32Host(d_act_t.Download()), act_ref), kBf16Tol) << static_cast<int>(tile) << " " << tma;
    }
  }
  // The TMA shapes read x rows contiguously: the rows gathered first.
  std::vector<float> xg(R * K);
  for (int64_t r = 0; r < R; ++r) std::copy(x.begin() + row_index[r] * K, x.begin() + (row_index[r] + 1) * K, xg.begin() + r * K);
  Buffer<bf16> d_xg(ToBf16Host(xg));
  for (GroupedTile tile : {GroupedTile::kTma128x128, GroupedTile::kTma128x256, GroupedTile::kTma256x128}) {
    SkinnyGroups contiguous = up;
    contiguous.row_index = nullptr;
    contiguous.weight_maps = d_m13.get();
    Buffer<bf16> d_act_t(ToBf16Host(std::vector<float>(R * I, NAN)));
    GroupedGemm(d_xg.get(), K, contiguous, I, SkinnyEpilogue::kSwiGluBf16, d_act_t.get(), R, nullptr, tile);
    EXPECT_LT(RelErrD(ToF32Host(d_act_t.Download()), act_ref), kBf16Tol) << static_cast<int>(tile);
  }
  up.weight_maps = nullptr;
  GroupedGemm(d_x.get(), K, up, I, SkinnyEpilogue::kSwiGluBf16, d_act.get(), R, nullptr);
  const std::vector<float> act = ToF32Host(d_act.Download());
  EXPECT_LT(RelErrD(act, act_ref), kBf16Tol);
  const std::vector<double> y_ref = ReferenceDown(act, offsets, w2, K, I);
  Buffer<bf16> d_y(ToBf16Host(std::vector<float>(R * K, NAN)));
  SkinnyGroups down;
  down.count = G;
  down.offsets = d_off.get();
  down.weights = d_p2.get();
  for (bool tma : {false, true}) {
    for (GroupedTile tile : tiles) {
      Buffer<bf16> d_y_t(ToBf16Host(std::vector<float>(R * K, NAN)));
      down.weight_maps = tma ? d_m2.get() : nullptr;
      GroupedGemm(d_act.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y_t.get(), R, nullptr, tile);
      EXPECT_LT(RelErrD(ToF32Host(d_y_t.Download()), y_ref), kBf16Tol) << static_cast<int>(tile) << " " << tma;
    }
  }
  std::vector<bf16> y_tma128;  // kTma128x128's results: the 64-column tile's must equal them bit for bit
  for (GroupedTile tile : {GroupedTile::kTma128x128, GroupedTile::kTma128x256, GroupedTile::kTma256x128,
                           GroupedTile::kTma128x64}) {
    Buffer<bf16> d_y_t(ToBf16Host(std::vector<float>(R * K, NAN)));
    down.weight_maps = d_m2.get();
    GroupedGemm(d_act.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y_t.get(), R, nullptr, tile);
    const std::vector<bf16> y_t = d_y_t.Download();
    EXPECT_LT(RelErrD(ToF32Host(y_t), y_ref), kBf16Tol) << static_cast<int>(tile);
    if (tile == GroupedTile::kTma128x128) y_tma128 = y_t;
    if (tile == GroupedTile::kTma128x64) {  // the same k order per element: an expert-parallel rank may take either
      for (size_t i = 0; i < y_t.size(); ++i) {
        ASSERT_EQ(static_cast<__nv_bfloat16_raw>(y_t[i]).x, static_cast<__nv_bfloat16_raw>(y_tma128[i]).x) << i;
      }
    }
  }
  {  // 128x64 has no SwiGLU epilogue: refused, not run
    SkinnyGroups contiguous = up;
    contiguous.row_index = nullptr;
    contiguous.weight_maps = d_m13.get();
    EXPECT_THROW(GroupedGemm(d_xg.get(), K, contiguous, I, SkinnyEpilogue::kSwiGluBf16, d_act.get(), R, nullptr,
                             GroupedTile::kTma128x64),
                 std::invalid_argument);
  }
  down.weight_maps = nullptr;
  GroupedGemm(d_act.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y.get(), R, nullptr);
  const std::vector<bf16> y_all = d_y.Download();
  EXPECT_LT(RelErrD(ToF32Host(y_all), y_ref), kBf16Tol);
  // Row offsets[3] + 200 (group 3's second m-tile) alone.
  const int32_t r = offsets[3] + 200;
  std::vector<int32_t> one_off(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) one_off[g + 1] = one_off[g] + (g == 3 ? 1 : 0);
  Buffer<int32_t> d_one_off(one_off);
  Buffer<bf16> d_act1(ToBf16Host(std::vector<float>(act.begin() + r * I, act.begin() + (r + 1) * I)));
  Buffer<bf16> d_y1(K);
  down.offsets = d_one_off.get();
  GroupedGemm(d_act1.get(), I, down, K, SkinnyEpilogue::kStoreBf16, d_y1.get(), 1, nullptr);
  const std::vector<bf16> y1 = d_y1.Download();
  for (int64_t k = 0; k < K; ++k) {
    ASSERT_EQ(static_cast<__nv_bfloat16_raw>(y1[k]).x, static_cast<__nv_bfloat16_raw>(y_all[r * K + k]).x) << k;
  }
}

// The norm before a MoE layer with the router product fused (RmsNormRouter): the normed row is
// AddRmsNorm's, bit for bit; the logits are the float64 product of that bf16 row with the router
// weight within float32 rounding; RouteAndGroup on them routes as RouteTopK. H covers the fast
// kernel's 1, 4 and 8 chunks a thread (8 experts in one group and in two), experts past one group,
// and the loop kernel (H not a multiple of 4).
TEST(GpuKernelsTest, RmsNormRouterMatchesFloat64Product) {
  SKIP_WITHOUT_GPU();
  for (const auto& [T, E, k, H] : std::vector<std::array<int64_t, 4>>{
           {1, 8, 2, 4096}, {4, 8, 2, 6144}, {3, 8, 2, 16384}, {64, 8, 2, 128}, {5, 3, 1, 40}, {2, 64, 6, 520},
           {3, 256, 8, 64}, {2, 8, 2, 66}}) {
    std::vector<float> x = RandomBf16Values(T * H, 91), w = RandomBf16Values(E * H, 92, 0.1f);
    std::vector<float> nw = RandomBf16Values(H, 93, 0.1f);
    for (auto& v : nw) v = Bf16ToF32(F32ToBf16(1.f + v));
    Buffer<float> d_x(x), d_x2(x), d_logits(T * E), d_weights(T * k);
    Buffer<bf16> d_w(ToBf16Host(w)), d_nw(ToBf16Host(nw)), d_out(T * H), d_out2(T * H);
    Buffer<int32_t> d_e(T * k), d_src(T * k), d_pos(T * k), d_off(E + 1);
    RmsNormRouter(d_x.get(), d_nw.get(), T, H, 1e-5f, d_out.get(), d_w.get(), E, d_logits.get(), nullptr);
    AddRmsNorm(d_x2.get(), nullptr, d_nw.get(), T, H, 1e-5f, d_out2.get(), nullptr);
    const std::vector<bf16> out = d_out.Download(), out2 = d_out2.Download();
    for (int64_t i = 0; i < T * H; ++i) {
      ASSERT_EQ(static_cast<__nv_bfloat16_raw>(out[i]).x, static_cast<__nv_bfloat16_raw>(out2[i]).x) << "H " << H;
    }
    std::vector<int32_t> rows(T);
    std::iota(rows.begin(), rows.end(), 0);
    const std::vector<double> ref = ReferenceLinear(ToF32Host(out), rows, w, E, H);
    RouteAndGroup(d_logits.get(), T, E, k, d_e.get(), d_weights.get(), d_src.get(), d_pos.get(), d_off.get(), nullptr,
                  nullptr, nullptr);
    const std::vector<float> logits = d_logits.Download();
    EXPECT_LT(RelErrD(logits, ref), 1e-5) << "T " << T << " E " << E << " H " << H;
    EXPECT_EQ(d_e.Download(), RouteTopK(logits.data(), T, E, k).expert) << "H " << H;
  }
}

}  // namespace
}  // namespace moe::gpu
