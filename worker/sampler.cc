#include "worker/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "worker/token_mask.h"

namespace moe {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// NaN is a broken logit, not a token to pick: it ranks below everything, like -inf.
double Sanitized(float logit) { return std::isnan(logit) ? kNegInf : static_cast<double>(logit); }

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  double best_value = Sanitized(logits[0]);
  for (size_t i = 1; i < logits.size(); ++i) {
    const double v = Sanitized(logits[i]);
    if (v > best_value) {  // strict: the first index keeps ties
      best = static_cast<int32_t>(i);
      best_value = v;
    }
  }
  return best;
}

double MaxLogit(std::span<const float> logits) {
  double max_logit = kNegInf;
  for (float l : logits) max_logit = std::max(max_logit, Sanitized(l));
  return max_logit;
}

// The log-softmax value of a (sanitized) logit x: the max token(s) get exactly -log_sum.
float LogProb(double x, double max_logit, double log_sum) {
  return static_cast<float>((x == max_logit ? 0.0 : x - max_logit) - log_sum);
}

// log of the sum over the row of exp(x - max_logit), in double. The max token(s) count as
// exp(0) = 1 explicitly, so an infinite max gives no inf - inf.
double LogSumShiftedExp(std::span<const float> logits, double max_logit) {
  double sum = 0.0;
  for (float l : logits) {
    const double x = Sanitized(l);
    sum += x == max_logit ? 1.0 : std::exp(x - max_logit);
  }
  return std::log(sum);
}

// A token still in the running. `weight` holds its scaled logit until the softmax turns it into
// an unnormalised probability; both orders rank tokens the same way.
struct Candidate {
  double weight;
  int32_t id;
};

// The one ranking every step uses: larger first, the lower id winning ties.
bool Heavier(const Candidate& a, const Candidate& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.id < b.id);
}

double Mass(std::span<const Candidate> c) {
  double sum = 0.0;
  for (const Candidate& x : c) sum += x.weight;
  return sum;
}

// Reorders `c` so that c[0..pos] are its pos + 1 heaviest candidates, c[pos] being the
// (pos + 1)-th, and returns pos: the first position, in Heavier order, at which the running mass
// reaches `target` (the last position if rounding keeps it from getting there). A quickselect
// that only descends into the half holding the crossing: expected O(n), no full sort.
size_t FindCrossing(std::span<Candidate> c, double target) {
  constexpr size_t kSortBelow = 32;  // small blocks: sorting beats further partitioning
  size_t lo = 0;
  size_t hi = c.size();
  double before = 0.0;  // mass of c[0, lo), the heaviest lo candidates
  while (hi - lo > kSortBelow) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(c.begin() + lo, c.begin() + mid, c.begin() + hi, Heavier);
    const double upper = Mass(c.subspan(lo, mid - lo));
    if (before + upper >= target) {
      hi = mid;
    } else {
      before += upper;
      lo = mid;
    }
  }
  std::sort(c.begin() + lo, c.begin() + hi, Heavier);
  for (size_t i = lo; i < hi; ++i) {
    before += c[i].weight;
    if (before >= target) return i;
  }
  return hi - 1;
}

// Buckets that order weights in (0, 1] without sorting: the bit pattern of a positive double
// grows with its value, so its top 16 bits (exponent and 4 mantissa bits, ~4% wide) give a
// bucket that never puts a lighter weight before a heavier one, and equal weights together.
// Weights below 2^-64 of the max (together under 1e-14 of the mass) share one tail bucket.
constexpr uint64_t kOneTopBits = 0x3FF0;  // top 16 bits of 1.0
constexpr size_t kTailBucket = 0x400 + 1;
constexpr size_t kNumBuckets = kTailBucket + 1;

size_t Bucket(double weight) {
  const uint64_t top_bits = std::bit_cast<uint64_t>(weight) >> 48;
  return static_cast<size_t>(std::min<uint64_t>(kOneTopBits - top_bits, kTailBucket));
}

// Where the running mass of `c`, in Heavier order, reaches `target`: candidates in buckets
// before `bucket` all come first; `edge` holds the bucket's own candidates, and edge[0..pos]
// are the ones up to and including the crossing candidate edge[pos].
struct Crossing {
  size_t bucket = 0;
  std::vector<Candidate> edge;
  size_t pos = 0;
};

// Two linear passes (bucket masses, then the crossing bucket's members) plus a selection inside
// that one bucket, instead of selecting over the whole vocabulary.
Crossing Locate(std::span<const Candidate> c, double target) {
  std::vector<double> mass(kNumBuckets, 0.0);
  for (const Candidate& x : c) mass[Bucket(x.weight)] += x.weight;
  Crossing out;
  double before = 0.0;
  size_t last_used = 0;
  for (size_t b = 0; b < kNumBuckets; ++b) {
    if (mass[b] == 0.0) continue;
    last_used = b;
    if (before + mass[b] >= target) break;
    before += mass[b];
  }
  // Rounding can leave the target just out of reach; the lightest bucket then holds the end.
  out.bucket = last_used;
  for (const Candidate& x : c) {
    if (Bucket(x.weight) == out.bucket) out.edge.push_back(x);
  }
  out.pos = FindCrossing(out.edge, target - before);
  return out;
}

// The smallest Heavier-order prefix of `c` whose mass reaches `target`, as a set.
std::vector<Candidate> Nucleus(std::span<const Candidate> c, double target) {
  Crossing x = Locate(c, target);
  std::vector<Candidate> kept;
  for (const Candidate& y : c) {
    if (Bucket(y.weight) < x.bucket) kept.push_back(y);
  }
  kept.insert(kept.end(), x.edge.begin(), x.edge.begin() + x.pos + 1);
  return kept;
}

// Scaled logits of every token, cut to the top_k largest when top_k limits anything.
std::vector<Candidate> TopKScaled(std::span<const float> logits, const SamplingParams& p) {
  std::vector<Candidate> c(logits.size());
  const double temperature = p.temperature;
  for (size_t i = 0; i < logits.size(); ++i) {
    // In double, so a tiny temperature cannot overflow finite logits to inf.
    c[i] = {Sanitized(logits[i]) / temperature, static_cast<int32_t>(i)};
  }
  const size_t k = static_cast<size_t>(p.top_k);
  if (k > 0 && k < c.size()) {
    // A small k is a heap scan (one comparison for most tokens); a large one a quickselect.
    if (k <= c.size() / 16) {
      std::partial_sort(c.begin(), c.begin() + k, c.end(), Heavier);
    } else {
      std::nth_element(c.begin(), c.begin() + k, c.end(), Heavier);
    }
    c.resize(k);
  }
  return c;
}

// Turns scaled logits into max-subtracted exponentials, dropping tokens whose probability is
// exactly zero: they can never be drawn, and without them every candidate left is a valid pick
// even when rounding leaves the cumulative mass a hair short of its target. The max token(s)
// get weight exactly 1, which also keeps +inf logits well defined.
void Exponentiate(std::vector<Candidate>& c, double max_logit) {
  for (Candidate& x : c) x.weight = x.weight == max_logit ? 1.0 : std::exp(x.weight - max_logit);
  std::erase_if(c, [](const Candidate& x) { return !(x.weight > 0.0); });
}

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat("temperature: must be finite and >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k: must be >= 0 (0 = off), got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {  // written so NaN fails too
    return absl::InvalidArgumentError(absl::StrCat("top_p: must be in (0, 1], got ", top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p: must be in [0, 1] (0 = off), got ", min_p));
  }
  return absl::OkStatus();
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& p, uint64_t step) {
  MOE_CHECK(!logits.empty(), "SampleToken needs at least one logit");
  MOE_CHECK(p.Validate().ok(), "sampling params must be validated where the request enters");
  if (p.greedy()) return Argmax(logits);

  std::vector<Candidate> c = TopKScaled(logits, p);
  double max_logit = kNegInf;
  for (const Candidate& x : c) max_logit = std::max(max_logit, x.weight);
  if (max_logit == kNegInf) return Argmax(logits);  // nothing has any probability
  Exponentiate(c, max_logit);

  if (p.top_p < 1.0f) {
    // Weights are unnormalised, so the threshold scales with their total instead.
    c = Nucleus(c, static_cast<double>(p.top_p) * Mass(c));
  }
  if (p.min_p > 0.0f) {
    // The most probable token has weight exactly 1 (Exponentiate), and top_p keeps it, so the
    // threshold min_p x its probability is min_p in unnormalised weights.
    const double floor = p.min_p;
    std::erase_if(c, [floor](const Candidate& x) { return x.weight < floor; });
  }
  Crossing pick = Locate(c, UniformDraw(p.seed, step) * Mass(c));
  return pick.edge[pick.pos].id;
}

TokenPick PickToken(std::span<const float> logits, const SamplingParams& p, uint64_t step,
                    std::span<const uint64_t> allowed, std::span<const LogitAdjustment> adjust) {
  TokenPick pick;
  if (allowed.empty() && adjust.empty()) {
    pick.token = SampleToken(logits, p, step);
  } else {
    thread_local std::vector<float> adjusted;
    adjusted.assign(logits.begin(), logits.end());
    for (const LogitAdjustment& a : adjust) {
      MOE_CHECK(a.id >= 0 && static_cast<size_t>(a.id) < adjusted.size(), "PickToken: adjusted id ", a.id,
                " outside the row of ", adjusted.size());
      adjusted[static_cast<size_t>(a.id)] = Adjusted(adjusted[static_cast<size_t>(a.id)], a);
    }
    if (!allowed.empty()) MaskLogits(allowed, adjusted);
    pick.token = SampleToken(adjusted, p, step);
  }
  const double max_logit = MaxLogit(logits);  // LogSoftmax's value at the token:
  pick.logprob = LogProb(Sanitized(logits[static_cast<size_t>(pick.token)]), max_logit,
                         LogSumShiftedExp(logits, max_logit));
  return pick;
}

namespace {

// TopTokens with the row's max and log-sum-exp already known.
std::vector<TokenPick> TopTokensOf(std::span<const float> logits, uint32_t n, double max_logit, double log_sum) {
  const size_t k = std::min<size_t>(n, logits.size());
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), [&](int32_t a, int32_t b) {
    const double la = Sanitized(logits[static_cast<size_t>(a)]), lb = Sanitized(logits[static_cast<size_t>(b)]);
    return la > lb || (la == lb && a < b);
  });
  std::vector<TokenPick> out;
  for (size_t i = 0; i < k; ++i) {
    out.push_back({ids[i], LogProb(Sanitized(logits[static_cast<size_t>(ids[i])]), max_logit, log_sum)});
  }
  return out;
}

}  // namespace

std::vector<TokenPick> TopTokens(std::span<const float> logits, uint32_t n) {
  if (n == 0 || logits.empty()) return {};
  const double max_logit = MaxLogit(logits);
  return TopTokensOf(logits, n, max_logit, LogSumShiftedExp(logits, max_logit));
}

RowScore ScoreRow(std::span<const float> logits, int32_t target, uint32_t top) {
  RowScore s;
  if (logits.empty() || (top == 0 && target < 0)) return s;
  const double max_logit = MaxLogit(logits);  // one normaliser for the target and the alternatives
  const double log_sum = LogSumShiftedExp(logits, max_logit);
  if (top > 0) s.top = TopTokensOf(logits, top, max_logit, log_sum);
  if (target < 0) return s;
  const double x = Sanitized(logits[static_cast<size_t>(target)]);
  s.logprob = LogProb(x, max_logit, log_sum);
  for (const float l : logits) s.rank += Sanitized(l) >= x;
  return s;
}

void LogSoftmax(std::span<const float> logits, std::span<float> out) {
  MOE_CHECK(out.size() == logits.size(), "LogSoftmax output size ", out.size(), " != ",
            logits.size());
  if (logits.empty()) return;
  const double max_logit = MaxLogit(logits);
  const double log_sum = LogSumShiftedExp(logits, max_logit);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = LogProb(Sanitized(logits[i]), max_logit, log_sum);
}

}  // namespace moe
