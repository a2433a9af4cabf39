#include "tests/support/reference_forward.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "tests/support/parallel_for.h"

namespace moe::testing_ref {
namespace {

// Row-major activations or weights in double. Shapes travel alongside as plain integers: every
// function below states the layout it expects, which is all a reference needs.
using Vec = std::vector<double>;

// A weight as Checkpoint::ReadF32 gives it: float32 holds every bf16 and f16 value exactly, and
// each product below promotes it to double, so all arithmetic after the (unavoidable) bf16 -> f32
// step happens in float64 (a full-size expert widened up front would take twice the memory).
using Weight = std::vector<float>;

// Reads `name` with exactly `shape` through the checkpoint's own converter.
absl::StatusOr<Weight> ReadWeight(const Checkpoint& ckpt, const std::string& name, std::vector<int64_t> shape) {
  const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  Weight w(static_cast<size_t>(n));
  MOE_RETURN_IF_ERROR(ckpt.ReadF32(name, shape, w.data()));
  return w;
}

// y[T, out] = x[T, in] W^T with W [out, in] (torch.nn.Linear without bias). Each output is the
// same plain sum whatever the threads; products of full-size layers spread their outputs over the
// cores (ParallelFor), small ones stay on one.
Vec Linear(const Vec& x, int64_t T, int64_t in, const Weight& w, int64_t out) {
  Vec y(static_cast<size_t>(T * out));
  auto column = [&](int64_t o) {
    const float* wr = &w[o * in];
    for (int64_t t = 0; t < T; ++t) {
      const double* xr = &x[t * in];
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(wr[i]) * xr[i];
      y[t * out + o] = s;
    }
  };
  if (T * in * out < (int64_t{1} << 24)) {
    for (int64_t o = 0; o < out; ++o) column(o);
  } else {
    ParallelFor(out, column);
  }
  return y;
}

// MixtralRMSNorm over each row of x [T, H]: x / sqrt(mean(x^2) + eps) * w.
Vec RmsNorm(const Vec& x, int64_t T, int64_t H, const Weight& w, double eps) {
  Vec y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(H) + eps);
    for (int64_t i = 0; i < H; ++i) y[t * H + i] = x[t * H + i] * inv * w[i];
  }
  return y;
}

// Rotary embedding in place on x [T, heads * d], non-interleaved (transformers' rotate_half):
// element i pairs with i + d/2, and both use the angle of frequency index i.
void ApplyRope(Vec& x, int64_t T, int64_t heads, int64_t d, double theta) {
  const int64_t half = d / 2;
  Vec inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(d));
  }
  for (int64_t p = 0; p < T; ++p) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = &x[(p * heads + h) * d];
      for (int64_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(p) * inv_freq[i];
        const double c = std::cos(a), s = std::sin(a);
        const double lo = v[i], hi = v[i + half];
        v[i] = lo * c - hi * s;
        v[i + half] = hi * c + lo * s;
      }
    }
  }
}

// Softmax of v in place, shifted by the maximum so large logits cannot overflow.
void Softmax(double* v, int64_t n) {
  const double m = *std::max_element(v, v + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (v[i] = std::exp(v[i] - m));
  for (int64_t i = 0; i < n; ++i) v[i] /= sum;
}

// Eager causal attention for one sequence. q [T, heads*d], k and v [T, kv_heads*d], both already
// rotated; returns the concatenated head outputs [T, heads*d] (before o_proj).
Vec Attention(const ModelConfig& c, const Vec& q, const Vec& k, const Vec& v, int64_t T) {
  const int64_t d = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Vec out(static_cast<size_t>(T * qd), 0.0);
  Vec scores(static_cast<size_t>(T));
  for (int64_t h = 0; h < c.num_heads; ++h) {
    const int64_t kvh = h / c.heads_per_kv();  // GQA: consecutive query heads share a kv head
    for (int64_t t = 0; t < T; ++t) {
      // Visible keys: causal (s <= t) and, with a sliding window w, s > t - w.
      const int64_t first = c.sliding_window ? std::max<int64_t>(0, t - *c.sliding_window + 1) : 0;
      const int64_t n = t - first + 1;
      const double* qv = &q[t * qd + h * d];
      for (int64_t s = first; s <= t; ++s) {
        const double* kv = &k[s * kvd + kvh * d];
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += qv[i] * kv[i];
        scores[s - first] = dot * scale;
      }
      Softmax(scores.data(), n);
      double* o = &out[t * qd + h * d];
      for (int64_t s = first; s <= t; ++s) {
        const double* vv = &v[s * kvd + kvh * d];
        for (int64_t i = 0; i < d; ++i) o[i] += scores[s - first] * vv[i];
      }
    }
  }
  return out;
}

// Indices of the k largest probabilities, largest first; equal values keep the lower index first.
std::vector<int> TopK(const double* probs, int64_t n, int64_t k) {
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

// Self-attention sub-block of layer `prefix`: returns o_proj(attn(x)) for normed input x [T, H].
absl::StatusOr<Vec> AttentionBlock(const ModelConfig& c, const Checkpoint& ckpt,
                                   const std::string& prefix, const Vec& x, int64_t T) {
  const int64_t H = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  const std::string a = prefix + "self_attn.";
  MOE_ASSIGN_OR_RETURN(Weight wq, ReadWeight(ckpt, a + "q_proj.weight", {qd, H}));
  MOE_ASSIGN_OR_RETURN(Weight wk, ReadWeight(ckpt, a + "k_proj.weight", {kvd, H}));
  MOE_ASSIGN_OR_RETURN(Weight wv, ReadWeight(ckpt, a + "v_proj.weight", {kvd, H}));
  MOE_ASSIGN_OR_RETURN(Weight wo, ReadWeight(ckpt, a + "o_proj.weight", {H, qd}));
  Vec q = Linear(x, T, H, wq, qd);
  Vec k = Linear(x, T, H, wk, kvd);
  Vec v = Linear(x, T, H, wv, kvd);
  ApplyRope(q, T, c.num_heads, c.head_dim, c.rope_theta);
  ApplyRope(k, T, c.num_kv_heads, c.head_dim, c.rope_theta);
  return Linear(Attention(c, q, k, v, T), T, qd, wo, H);
}

// Sparse MoE sub-block of layer `layer`: routes each row of normed x [T, H] to its top-k experts
// and returns their weighted sum. Records the router logits [T, E] and the choices per token.
absl::StatusOr<Vec> MoeBlock(const ModelConfig& c, const Checkpoint& ckpt, const std::string& prefix,
                             const Vec& x, int64_t T, double* router_logits_out,
                             std::vector<std::vector<int>>& topk_out) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  const int64_t K = c.experts_per_token;
  const std::string m = prefix + "block_sparse_moe.";
  MOE_ASSIGN_OR_RETURN(Weight wg, ReadWeight(ckpt, m + "gate.weight", {E, H}));
  const Vec logits = Linear(x, T, H, wg, E);
  std::copy(logits.begin(), logits.end(), router_logits_out);

  // Per token: softmax over all experts, keep the top k, renormalise them to sum to one.
  // weight_of[t][e] is the renormalised weight; selected[t][e] says whether e is among the k
  // (kept apart because a selected expert's probability may underflow to zero).
  std::vector<std::vector<double>> weight_of(static_cast<size_t>(T), std::vector<double>(E, 0.0));
  std::vector<std::vector<bool>> selected(static_cast<size_t>(T), std::vector<bool>(E, false));
  topk_out.assign(static_cast<size_t>(T), {});
  for (int64_t t = 0; t < T; ++t) {
    Vec p(logits.begin() + t * E, logits.begin() + (t + 1) * E);
    Softmax(p.data(), E);
    topk_out[t] = TopK(p.data(), E, K);
    double sum = 0;
    for (int e : topk_out[t]) sum += p[e];
    for (int e : topk_out[t]) {
      weight_of[t][e] = p[e] / sum;
      selected[t][e] = true;
    }
  }

  // Each expert runs only on the tokens routed to it: w2(silu(w1 x) * (w3 x)).
  Vec out(static_cast<size_t>(T * H), 0.0);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < T; ++t) {
      if (selected[t][e]) rows.push_back(t);
    }
    if (rows.empty()) continue;
    const std::string p = m + "experts." + std::to_string(e) + ".";
    MOE_ASSIGN_OR_RETURN(Weight w1, ReadWeight(ckpt, p + "w1.weight", {I, H}));
    MOE_ASSIGN_OR_RETURN(Weight w3, ReadWeight(ckpt, p + "w3.weight", {I, H}));
    MOE_ASSIGN_OR_RETURN(Weight w2, ReadWeight(ckpt, p + "w2.weight", {H, I}));
    // Its rows together (each output the same sum as row by row; the weights are read once).
    const int64_t R = static_cast<int64_t>(rows.size());
    Vec xr(static_cast<size_t>(R * H));
    for (int64_t r = 0; r < R; ++r) std::copy_n(x.begin() + rows[r] * H, H, xr.begin() + r * H);
    const Vec g = Linear(xr, R, H, w1, I);
    const Vec u = Linear(xr, R, H, w3, I);
    Vec act(static_cast<size_t>(R * I));
    for (int64_t i = 0; i < R * I; ++i) act[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    const Vec y = Linear(act, R, I, w2, H);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = rows[r];
      for (int64_t i = 0; i < H; ++i) out[t * H + i] += weight_of[t][e] * y[r * H + i];
    }
  }
  return out;
}

void AddInPlace(Vec& x, const Vec& y) {
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

}  // namespace

absl::StatusOr<ReferenceOutput> ReferenceForward(const ModelConfig& c, const Checkpoint& ckpt,
                                                 const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t H = c.hidden_size, V = c.vocab_size, L = c.num_layers, E = c.num_experts;
  if (T == 0) return absl::InvalidArgumentError("ReferenceForward: empty token list");
  // The plain rotary of rope_theta only: scaled RoPE is checked against transformers' data
  // (tests/data/golden/yarn, rope_reference.json), not against this code.
  if (c.rope_scaling.type != RopeScaling::Type::kDefault) {
    return absl::InvalidArgumentError("ReferenceForward: RoPE scaling is not modelled here");
  }
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("ReferenceForward: token ", tokens[t], " at position ", t,
                       " is outside the vocabulary of ", V));
    }
  }

  ReferenceOutput r;
  r.T = T;
  r.vocab = V;
  r.layers = L;
  r.experts = E;
  r.router_logits.assign(static_cast<size_t>(L * T * E), 0.0);
  r.topk.resize(static_cast<size_t>(L));

  MOE_ASSIGN_OR_RETURN(Weight embed, ReadWeight(ckpt, "model.embed_tokens.weight", {V, H}));
  Vec x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(embed.begin() + tokens[t] * H, H, x.begin() + t * H);
  }

  for (int64_t l = 0; l < L; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    MOE_ASSIGN_OR_RETURN(Weight in_norm, ReadWeight(ckpt, prefix + "input_layernorm.weight", {H}));
    MOE_ASSIGN_OR_RETURN(Vec attn,
                         AttentionBlock(c, ckpt, prefix, RmsNorm(x, T, H, in_norm, c.rms_norm_eps), T));
    AddInPlace(x, attn);

    MOE_ASSIGN_OR_RETURN(Weight post_norm, ReadWeight(ckpt, prefix + "post_attention_layernorm.weight", {H}));
    MOE_ASSIGN_OR_RETURN(Vec moe, MoeBlock(c, ckpt, prefix, RmsNorm(x, T, H, post_norm, c.rms_norm_eps), T,
                                           &r.router_logits[l * T * E], r.topk[l]));
    AddInPlace(x, moe);
  }

  MOE_ASSIGN_OR_RETURN(Weight final_norm, ReadWeight(ckpt, "model.norm.weight", {H}));
  const Vec h = RmsNorm(x, T, H, final_norm, c.rms_norm_eps);
  if (c.tie_word_embeddings) {
    r.logits = Linear(h, T, H, embed, V);
  } else {
    MOE_ASSIGN_OR_RETURN(Weight lm_head, ReadWeight(ckpt, "lm_head.weight", {V, H}));
    r.logits = Linear(h, T, H, lm_head, V);
  }
  return r;
}

}  // namespace moe::testing_ref
