// Token sampling on the device (kernels.h: SampleRows): SampleToken's rule (worker/sampler.h) for
// one logits row per block, so a decode step copies a token and its log-probability to the host
// instead of a vocabulary-wide row. A row may come with a bit row of the ids it may draw (a JSON
// grammar's mask, banned ids) and a penalised copy (AdjustRows): the draw sees the copy with the
// banned ids at -inf, the log-probability the raw row.
//
// Nothing is sorted: every "first position, in the order heavier first (ties to the lower id), at
// which a running total reaches a target" is found by a radix descent over the tokens' 32-bit
// order keys (four passes, one byte each, a histogram of the amount per digit), then a walk over
// the tokens that share the last key, in index order. Top-k counts tokens; top-p and the draw sum
// probability masses. The masses are fixed-point integers (the weight exp(s - max) in (0, 1] times
// 2^(63 - ceil(log2 V)), so no sum can overflow): integer sums do not depend on their order, so the
// pick is a deterministic function of the row, whatever the scheduling of atomics. Against the
// host's double sums this moves each boundary by at most ~V * 2^-48 of the mass, and tokens whose
// weight is under 2^-48 of the top token's (probability under ~4e-15) are never drawn. (The host
// ranks the masses by weight, the device by logit: they differ only where two different logits
// round to the same double weight.)
#include <climits>
#include <cmath>
#include <stdexcept>

#include "common/uniform_draw.h"
#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "kernels/launch.cuh"

namespace moe::gpu {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kDigits = 256;

// NaN ranks as -inf; -0 as +0 (equal logits must have equal keys).
__device__ __forceinline__ float Clean(float v) { return isnan(v) ? -INFINITY : (v == 0.f ? 0.f : v); }

// A key that orders floats as their values: flip all bits of negatives, the sign bit of the rest.
__device__ __forceinline__ uint32_t Key(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float FromKey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The tokens at or above a position in the order heavier first: key above `key`, or equal to it
// with an index up to `idx`.
struct Cut {
  uint32_t key;
  int idx;
};
__device__ __forceinline__ bool Within(uint32_t key, int i, Cut c) { return key > c.key || (key == c.key && i <= c.idx); }
constexpr Cut kEverything{0u, INT_MAX};  // every key is above 0: -inf's is 0x007FFFFF

// The log-softmax value of a (clean) logit, as the host's LogProb (worker/sampler.cc): the max
// token(s) get exactly -log_sum, so an infinite max gives no inf - inf.
__device__ __forceinline__ float LogProb(double v, double max_logit, double log_sum) {
  return static_cast<float>((v == max_logit ? 0.0 : v - max_logit) - log_sum);
}

// (value, index) ordered as the host's argmax: the larger value, then the lower index.
__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

struct Shared {
  double f64[kWarps];
  float best_v[kWarps];
  int best_i[kWarps];
  int warp_count[kWarps];
  int digit;
  unsigned long long above, target;
  int found;
  int top_count;
  float top_v[kMaxSampleTop];
  int top_i[kMaxSampleTop];
};

// Per-warp digit histograms, in dynamic shared memory: [kWarps][kDigits].
constexpr size_t kHistogramBytes = sizeof(unsigned long long) * kWarps * kDigits;

// Block-wide sums and minima, in a fixed tree (deterministic); every thread gets the result.
__device__ double BlockSum(double v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // the scratch may still be read by a previous call
  if (lane == 0) sh.f64[warp] = v;
  __syncthreads();
  v = lane < kWarps ? sh.f64[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ int BlockMin(int v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) sh.best_i[warp] = v;
  __syncthreads();
  v = lane < kWarps ? sh.best_i[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One row and its sampling parameters.
struct Row {
  const float* x;           // the raw logits (the log-probability's)
  const float* xa;          // the logits the draw sees (penalised: AdjustRows'; or x)
  const uint32_t* allowed;  // null: every id; else bit i of the row's words
  int V;
  double temperature;
  double max_scaled;  // the largest allowed logit over the temperature: its tokens have weight exactly 1
  int shift;          // fixed-point scale of the weights

  __device__ float Raw(int i) const { return Clean(x[i]); }
  // The logit the draw sees: -inf for an id the row's mask bans.
  __device__ float Value(int i) const {
    return allowed == nullptr || ((allowed[i >> 5] >> (i & 31)) & 1u) != 0 ? Clean(xa[i]) : -INFINITY;
  }
  // exp(v / T - max / T) as SampleToken computes it (in double): the top token's is exactly 1.
  __device__ double Weight(float v) const {
    const double s = static_cast<double>(v) / temperature;
    return s == max_scaled ? 1.0 : exp(s - max_scaled);
  }
  // The weight in fixed point; 0: never drawn.
  __device__ unsigned long long Mass(float v) const { return __double2ull_rd(ldexp(Weight(v), shift)); }
};

// The index of the n-th token (n >= 1, in index order) with key `key` that `keep` keeps.
template <class Keep>
__device__ int NthWithKey(const Row& r, uint32_t key, unsigned long long n, Keep keep, Shared& sh) {
  if (n == 1) {  // the usual case (keys rarely tie): the first one
    int first = INT_MAX;
    for (int i = threadIdx.x; i < r.V; i += kThreads) {
      const float v = r.Value(i);
      if (Key(v) == key && keep(key, i)) first = min(first, i);
    }
    return BlockMin(first, sh);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long before = 0;  // matching tokens in the tiles already passed
  if (threadIdx.x == 0) sh.found = INT_MAX;
  for (int tile = 0; tile < r.V; tile += kThreads) {
    const int i = tile + static_cast<int>(threadIdx.x);
    const bool match = i < r.V && Key(r.Value(i)) == key && keep(key, i);
    const unsigned ballot = __ballot_sync(0xffffffffu, match);
    __syncthreads();  // warp_count of the last tile has been read
    if (lane == 0) sh.warp_count[warp] = __popc(ballot);
    __syncthreads();
    unsigned long long rank = before + __popc(ballot & ((1u << lane) - 1u));
    int tile_total = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int c = sh.warp_count[w];
      if (w < warp) rank += c;
      tile_total += c;
    }
    if (match && rank + 1 == n) sh.found = i;
    __syncthreads();
    if (sh.found != INT_MAX) return sh.found;
    before += tile_total;
  }
  return sh.found;  // not reached when n is at most the number of matching tokens
}

// What a descent looks for, in the order heavier first among the tokens it keeps: the k-th token
// (count), or the first token at which the running mass reaches `fraction` of their whole mass
// (at least the first token; the whole mass comes from the descent's first pass).
struct Goal {
  bool count;
  unsigned long long k;
  double fraction;
};

// The position of `goal` as a cut: the tokens up to and including it. Four passes over the row,
// one key byte each from the top: a histogram of the amount (1 per token, or its mass) of the kept
// tokens under the prefix so far, per digit, and the digit where the running amount crosses the
// target; then the crossing among the tokens of that exact key, in index order.
template <class Keep>
__device__ Cut Descend(const Row& r, Goal goal, Keep keep, Shared& sh, unsigned long long* hist) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0;  // the amount of kept tokens whose key is above the prefix's range
  unsigned long long target = goal.k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < kWarps * kDigits; j += kThreads) hist[j] = 0;
    __syncthreads();
    // Each warp fills its own histogram: a heavy digit (most tokens of a row share the top key
    // byte) is contended inside a warp only. Counting needs no atomics at all: one lane per digit
    // adds its warp's tokens.
    unsigned long long* mine = hist + warp * kDigits;
    for (int base = 0; base < r.V; base += kThreads) {  // uniform in the warp, for the match
      const int i = base + static_cast<int>(threadIdx.x);
      bool in = false;
      uint32_t digit = kDigits;  // none
      unsigned long long a = 0;
      if (i < r.V) {
        const float v = r.Value(i);
        const uint32_t k = Key(v);
        if ((k & mask) == prefix && keep(k, i)) {
          a = goal.count ? 1ull : r.Mass(v);
          in = a != 0;
          digit = (k >> shift) & 0xFFu;
        }
      }
      if (goal.count) {
        const unsigned peers = __match_any_sync(0xffffffffu, in ? digit : kDigits);
        if (in && lane == __ffs(peers) - 1) mine[digit] += __popc(peers);
      } else if (in) {
        atomicAdd(&mine[digit], a);
      }
    }
    __syncthreads();
    if (threadIdx.x < kDigits) {  // column sums into warp 0's histogram
      unsigned long long sum = 0;
      for (int w = 0; w < kWarps; ++w) sum += hist[w * kDigits + threadIdx.x];
      hist[threadIdx.x] = sum;
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds digits 255 - 8l down to 248 - 8l: lanes in order walk the digits downwards.
      unsigned long long d[8], mine_sum = 0;
      for (int j = 0; j < 8; ++j) {
        d[j] = hist[255 - 8 * lane - j];
        mine_sum += d[j];
      }
      unsigned long long incl = mine_sum;
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      if (shift == 24 && !goal.count) {  // the whole mass is known now
        const unsigned long long total = __shfl_sync(0xffffffffu, incl, 31);
        const double want = ceil(goal.fraction * static_cast<double>(total));
        target = want < 1.0 ? 1ull : (want >= static_cast<double>(total) ? total : static_cast<unsigned long long>(want));
      }
      const unsigned reach = __ballot_sync(0xffffffffu, above + incl >= target);
      // With the target within the whole amount some lane reaches it; otherwise (a broken caller)
      // the lightest digit with any amount ends the walk.
      const int first = reach != 0 ? __ffs(reach) - 1 : 31;
      if (lane == first) {
        unsigned long long run = above + incl - mine_sum;
        int pick = -1, last = -1;
        for (int j = 0; j < 8 && pick < 0; ++j) {
          if (d[j] != 0) last = j;
          if (d[j] != 0 && run + d[j] >= target) {
            pick = j;
          } else {
            run += d[j];
          }
        }
        if (pick < 0) pick = last < 0 ? 7 : last;
        sh.digit = 255 - 8 * lane - pick;
        sh.above = run;
        sh.target = target;
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh.digit) << shift;
    mask |= 0xFFu << shift;
    above = sh.above;
    target = sh.target;
  }
  // Every token with the key `prefix` has the same amount: the crossing is the n-th of them.
  const unsigned long long each = goal.count ? 1ull : r.Mass(FromKey(prefix));
  unsigned long long n = each == 0 ? 1 : (target - above + each - 1) / each;
  if (n == 0) n = 1;
  return Cut{prefix, NthWithKey(r, prefix, n, keep, sh)};
}

// SampleToken's pick for a row with a finite or +inf maximum and T > 0.
__device__ int SampleRow(const Row& r, const SampleRowParams& p, Shared& sh, unsigned long long* hist) {
  Cut top_k = kEverything;
  if (p.top_k > 0 && p.top_k < r.V) {
    const Goal goal{true, static_cast<unsigned long long>(p.top_k), 0.0};
    top_k = Descend(r, goal, [](uint32_t, int) { return true; }, sh, hist);
  }
  Cut nucleus = kEverything;
  if (p.top_p < 1.f) {  // the smallest prefix whose mass reaches top_p of the whole
    nucleus = Descend(r, Goal{false, 0, p.top_p}, [top_k](uint32_t k, int i) { return Within(k, i, top_k); }, sh, hist);
  }
  // Inverse CDF: the first kept token whose running mass reaches u times the kept mass. min_p
  // (after top_p, as on the host) keeps the tokens whose weight is at least min_p times the top
  // token's, which is 1.
  const uint64_t seed = (static_cast<uint64_t>(p.seed_hi) << 32) | p.seed_lo;
  const uint64_t step = (static_cast<uint64_t>(p.step_hi) << 32) | p.step_lo;
  const double min_p = p.min_p;
  const auto kept = [top_k, nucleus, min_p, &r](uint32_t k, int i) {
    return Within(k, i, top_k) && Within(k, i, nucleus) && (min_p == 0.0 || r.Weight(FromKey(k)) >= min_p);
  };
  return Descend(r, Goal{false, 0, UniformDraw(seed, step)}, kept, sh, hist).idx;
}

__global__ void __launch_bounds__(kThreads) SampleRowsKernel(const float* logits, int V, const SampleRowParams* params,
                                                             const uint32_t* allowed, int allowed_words,
                                                             const float* adjusted, int32_t* tokens, float* logprobs,
                                                             int32_t* top_ids, float* top_logprobs, int top_stride,
                                                             float* target_logprobs, int32_t* target_ranks) {
  PdlGate();
  __shared__ Shared sh;
  extern __shared__ unsigned long long hist[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * V;
  const SampleRowParams p = params[blockIdx.x];
  const uint32_t* mask = p.allowed_row < 0 ? nullptr : allowed + static_cast<int64_t>(p.allowed_row) * allowed_words;
  const float* xa = p.adjusted_row < 0 ? x : adjusted + static_cast<int64_t>(p.adjusted_row) * V;
  Row r{x, xa, mask, V, static_cast<double>(p.temperature), 0.0, 0};

  // The argmax of the allowed ids (SampleToken's greedy rule) and their maximum; the raw row's
  // maximum for the log-probability.
  float bv = -INFINITY, raw_max = -INFINITY;
  int bi = INT_MAX;  // past the end: any real index wins a tie with it
  for (int i = threadIdx.x; i < V; i += kThreads) {
    const float v = r.Value(i);
    if (Better(v, i, bv, bi)) bv = v, bi = i;
    raw_max = fmaxf(raw_max, r.Raw(i));
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (Better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  if (lane == 0) sh.best_v[warp] = bv, sh.best_i[warp] = bi;
  __syncthreads();
  bv = lane < kWarps ? sh.best_v[lane] : -INFINITY;
  bi = lane < kWarps ? sh.best_i[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (Better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const double max_allowed = bv;
  // The raw maximum: the allowed one, unless a mask or a penalty moved it (then a block-wide pass).
  double max_logit = max_allowed;
  if (mask != nullptr || xa != x) {
    for (int o = 16; o > 0; o >>= 1) raw_max = fmaxf(raw_max, __shfl_xor_sync(0xffffffffu, raw_max, o));
    __syncthreads();  // best_v has been read
    if (lane == 0) sh.best_v[warp] = raw_max;
    __syncthreads();
    raw_max = lane < kWarps ? sh.best_v[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) raw_max = fmaxf(raw_max, __shfl_xor_sync(0xffffffffu, raw_max, o));
    max_logit = raw_max;
  }

  // log of the sum of exp(x - max) over the raw logits (the max token(s) count exactly 1).
  double sum = 0.0;
  for (int i = threadIdx.x; i < V; i += kThreads) {
    const double v = r.Raw(i);
    sum += v == max_logit ? 1.0 : exp(v - max_logit);
  }
  const double log_sum = log(BlockSum(sum, sh));
  // A scored row's target: its log-probability and the ids at least as probable (exact in double).
  if (p.target >= 0 && p.target < V) {
    const float t = r.Raw(p.target);
    double count = 0.0;
    for (int i = threadIdx.x; i < V; i += kThreads) count += r.Raw(i) >= t ? 1.0 : 0.0;
    count = BlockSum(count, sh);
    if (threadIdx.x == 0) {
      target_logprobs[blockIdx.x] = LogProb(t, max_logit, log_sum);
      target_ranks[blockIdx.x] = static_cast<int32_t>(count);
    }
  }

  int token = bi < V ? bi : 0;
  if (p.temperature > 0.f && max_allowed > -INFINITY) {  // else the argmax rule, as on the host
    r.max_scaled = max_allowed / r.temperature;
    r.shift = 63 - (V > 1 ? 32 - __clz(V - 1) : 0);  // V * 2^shift <= 2^63
    token = SampleRow(r, p, sh, hist);
  }
  // The top alternatives: the cut after the n-th largest raw logit, the tokens above it collected
  // (exactly n), then ordered by one thread.
  const int n_top = min(p.top_n, V);
  if (n_top > 0) {
    const Row raw{x, x, nullptr, V, 1.0, 0.0, 0};
    __syncthreads();  // the draw's descents are done with the scratch
    const Cut cut = n_top >= V ? kEverything
                               : Descend(raw, Goal{true, static_cast<unsigned long long>(n_top), 0.0},
                                         [](uint32_t, int) { return true; }, sh, hist);
    if (threadIdx.x == 0) sh.top_count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += kThreads) {
      const float v = raw.Value(i);
      if (Within(Key(v), i, cut)) {
        const int slot = atomicAdd(&sh.top_count, 1);
        if (slot < kMaxSampleTop) sh.top_v[slot] = v, sh.top_i[slot] = i;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int n = min(sh.top_count, n_top);
      for (int a = 1; a < n; ++a) {  // insertion sort: larger first, the lower id on ties
        const float v = sh.top_v[a];
        const int i = sh.top_i[a];
        int b = a;
        for (; b > 0 && Better(v, i, sh.top_v[b - 1], sh.top_i[b - 1]); --b) {
          sh.top_v[b] = sh.top_v[b - 1], sh.top_i[b] = sh.top_i[b - 1];
        }
        sh.top_v[b] = v, sh.top_i[b] = i;
      }
      for (int a = 0; a < n; ++a) {
        top_ids[static_cast<int64_t>(blockIdx.x) * top_stride + a] = sh.top_i[a];
        top_logprobs[static_cast<int64_t>(blockIdx.x) * top_stride + a] = LogProb(sh.top_v[a], max_logit, log_sum);
      }
    }
  }
  if (threadIdx.x == 0) {
    tokens[blockIdx.x] = token;
    logprobs[blockIdx.x] = LogProb(r.Raw(token), max_logit, log_sum);
  }
}

constexpr int kAdjustThreads = 1024;

__global__ void __launch_bounds__(kAdjustThreads) AdjustRowsKernel(const float* __restrict__ logits, int V,
                                                                   const int32_t* __restrict__ adjust_rows,
                                                                   const LogitAdjustment* __restrict__ entries,
                                                                   float* __restrict__ adjusted) {
  PdlGate();
  const int row = adjust_rows[3 * blockIdx.x], first = adjust_rows[3 * blockIdx.x + 1],
            count = adjust_rows[3 * blockIdx.x + 2];
  const float* __restrict__ x = logits + static_cast<int64_t>(row) * V;
  float* __restrict__ y = adjusted + static_cast<int64_t>(blockIdx.x) * V;
#pragma unroll 4
  for (int i = threadIdx.x; i < V; i += kAdjustThreads) y[i] = x[i];
  __syncthreads();  // the copy of an entry's id is written before the entry changes it
  for (int e = threadIdx.x; e < count; e += blockDim.x) {
    const LogitAdjustment a = entries[first + e];
    y[a.id] = Adjusted(y[a.id], a);
  }
}

}  // namespace

void AdjustRows(const float* logits, int64_t V, const int32_t* adjust_rows, int64_t rows,
                const LogitAdjustment* entries, float* adjusted, cudaStream_t s) {
  if (rows == 0) return;
  Launch(AdjustRowsKernel, static_cast<unsigned>(rows), kAdjustThreads, 0, s, logits, static_cast<int>(V), adjust_rows,
         entries, adjusted);
  MOE_CUDA_CHECK_LAUNCH();
}

void SampleRows(const float* logits, int64_t rows, int64_t V, const SampleRowParams* params, const uint32_t* allowed,
                const float* adjusted, int32_t* tokens, float* logprobs, cudaStream_t s, int32_t* top_ids,
                float* top_logprobs, int64_t top_stride, float* target_logprobs, int32_t* target_ranks) {
  if (rows == 0) return;
  if (V <= 0 || V >= (int64_t{1} << 31)) throw std::invalid_argument("SampleRows: vocabulary size out of range");
  // Raised once (not per launch: launches may be captured into a CUDA graph).
  static const bool raised = [] {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(SampleRowsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kHistogramBytes)));
    return true;
  }();
  (void)raised;
  Launch(SampleRowsKernel, static_cast<unsigned>(rows), kThreads, kHistogramBytes, s, logits, static_cast<int>(V),
         params, allowed, static_cast<int>(AllowedRowWords(V)), adjusted, tokens, logprobs, top_ids, top_logprobs,
         static_cast<int>(top_stride), target_logprobs, target_ranks);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
