// Every CUDA kernel against the CPU implementation of the same op (worker/cpu, worker/moe), on
// random inputs rounded to bf16 first, so the only differences are the GPU's float rounding and
// its bf16 outputs. Without a CUDA device every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "worker/cpu/ops.h"
#include "worker/model/safetensors.h"
#include "worker/moe/router.h"

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
  std::vector<double> inv(D / 2);
  cpu::RopeInvFreq(D, 1e6, inv);
  Buffer<bf16> d_x(ToBf16Host(x));
  Buffer<int32_t> d_pos(pos);
  Buffer<double> d_inv(inv);
  Rope(d_x.get(), d_pos.get(), T, heads, D, d_inv.get(), nullptr);
  cpu::ApplyRope(x.data(), T, heads, D, pos64.data(), inv);
  EXPECT_LT(RelErr(ToF32Host(d_x.Download()), x), kBf16Tol);
}

TEST(GpuKernelsTest, SwiGluMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 6, I = 1000;
  std::vector<float> gu = RandomBf16Values(M * 2 * I, 6, 2.f), ref(M * I);
  Buffer<bf16> d_gu(ToBf16Host(gu)), d_out(M * I);
  SwiGlu(d_gu.get(), M, I, d_out.get(), nullptr);
  cpu::SwiGlu(gu.data(), M, I, ref.data());
  EXPECT_LT(RelErr(ToF32Host(d_out.Download()), ref), kBf16Tol);
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
  }
}

struct AttnCase {
  int64_t heads, kv_heads, D, block_size, window;
};

// Several sequences of different lengths in a shuffled block pool; query rows include whole
// prefills and single decode positions. Reference: cpu::AttendOne over the same bf16 values.
TEST(GpuKernelsTest, PagedAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const AttnCase& c : {AttnCase{32, 8, 128, 16, 0}, AttnCase{8, 2, 64, 4, 0}, AttnCase{6, 2, 32, 16, 5},
                            AttnCase{4, 4, 96, 8, 0}, AttnCase{8, 1, 128, 16, 33}}) {
    const std::vector<int64_t> lens = {1, 17, 130, 64};
    const int64_t S = static_cast<int64_t>(lens.size()), width = c.kv_heads * c.D;
    const int64_t max_blocks = (130 + c.block_size - 1) / c.block_size, pool = S * max_blocks;
    std::vector<int32_t> blocks(pool);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(12));
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
    PagedAttention(d_q.get(), d_seq.get(), d_pos.get(), rows, c.heads, kv, c.window, scale, d_out.get(), nullptr);
    std::vector<float> out = ToF32Host(d_out.Download()), ref(out.size());
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
    EXPECT_LT(RelErr(out, ref), kBf16Tol) << "heads " << c.heads << " kv " << c.kv_heads << " D " << c.D
                                          << " window " << c.window;
  }
}

}  // namespace
}  // namespace moe::gpu
