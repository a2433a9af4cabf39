#include "worker/model/weights.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moe {
namespace {

// ReadF32 into `out` (product(shape) floats), then the finiteness check.
absl::Status ReadInto(const Checkpoint& ckpt, const std::string& name, std::span<const int64_t> shape, float* out) {
  MOE_RETURN_IF_ERROR(ckpt.ReadF32(name, shape, out));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) {
      MOE_ASSIGN_OR_RETURN(TensorView t, ckpt.Get(name));
      return NonFiniteWeightError(name, t.file, shape, i, out[i]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Read(const Checkpoint& ckpt, const std::string& name,
                                        std::vector<int64_t> shape) {
  // The file's tensor first: a config.json whose sizes the checkpoint does not have is refused
  // before they size the buffer (a vocab_size of 2^31 was std::bad_alloc, naming nothing).
  MOE_RETURN_IF_ERROR(ckpt.GetF32Readable(name, shape).status());
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  MOE_RETURN_IF_ERROR(ReadInto(ckpt, name, shape, out.data()));
  return out;
}

int64_t Bytes(const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); }

}  // namespace

std::string LayerTensorName(int64_t layer, const std::string& suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::string ExpertTensorName(int64_t layer, int64_t expert, const std::string& w) {
  return absl::StrCat("model.layers.", layer, ".block_sparse_moe.experts.", expert, ".", w, ".weight");
}

absl::Status NonFiniteWeightError(const std::string& name, const std::string& file,
                                  std::span<const int64_t> shape, int64_t index, float value) {
  // The position as indices, last dimension fastest ([row, column] for a matrix).
  std::vector<int64_t> position(shape.size());
  int64_t rest = index;
  for (size_t d = shape.size(); d-- > 0;) {
    position[d] = shape[d] > 0 ? rest % shape[d] : 0;
    rest = shape[d] > 0 ? rest / shape[d] : 0;
  }
  return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", file, " holds ", value, " at [",
                                                 absl::StrJoin(position, ", "),
                                                 "] (its first value that is not finite): the checkpoint is damaged "
                                                 "or was converted wrongly"));
}

absl::Status CheckCheckpointHoldsOnlyTheModel(const ModelConfig& c, const Checkpoint& ckpt) {
  std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (const char* suffix : {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                               "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                               "block_sparse_moe.gate.weight"}) {
      expected.insert(LayerTensorName(l, suffix));
    }
    for (int64_t e = 0; e < c.num_experts; ++e) {
      for (const char* w : {"w1", "w2", "w3"}) expected.insert(ExpertTensorName(l, e, w));
    }
  }
  for (const std::string& name : ckpt.Names()) {
    if (expected.count(name) > 0 || name.ends_with(".rotary_emb.inv_freq")) continue;
    MOE_ASSIGN_OR_RETURN(const TensorView t, ckpt.Get(name));
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' in ", t.file, " is not part of the model config.json describes (", c.num_layers,
        " layers of ", c.num_experts, " experts, MixtralForCausalLM's tensor names): the checkpoint and its "
        "config.json disagree"));
  }
  return absl::OkStatus();
}

int64_t ModelWeights::bytes() const {
  int64_t b = Bytes(embed) + Bytes(final_norm) + Bytes(lm_head);
  for (const auto& a : attention) b += Bytes(a.norm) + Bytes(a.wq) + Bytes(a.wk) + Bytes(a.wv) + Bytes(a.wo);
  for (const auto& m : moe) {
    b += Bytes(m.norm) + Bytes(m.router);
    for (const auto& [e, w] : m.experts) b += Bytes(w.w13) + Bytes(w.w2);
  }
  return b;
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const Checkpoint& ckpt, const ExpertFilter& holds,
                                         const std::function<void(int64_t, int64_t)>& progress) {
  MOE_RETURN_IF_ERROR(CheckCheckpointHoldsOnlyTheModel(c, ckpt));
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  ModelWeights w;
  MOE_ASSIGN_OR_RETURN(w.embed, Read(ckpt, "model.embed_tokens.weight", {c.vocab_size, H}));
  MOE_ASSIGN_OR_RETURN(w.final_norm, Read(ckpt, "model.norm.weight", {H}));
  if (!c.tie_word_embeddings) {
    MOE_ASSIGN_OR_RETURN(w.lm_head, Read(ckpt, "lm_head.weight", {c.vocab_size, H}));
  }
  w.attention.resize(c.num_layers);
  w.moe.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    AttentionWeights& a = w.attention[l];
    MOE_ASSIGN_OR_RETURN(a.norm, Read(ckpt, LayerTensorName(l, "input_layernorm.weight"), {H}));
    MOE_ASSIGN_OR_RETURN(a.wq, Read(ckpt, LayerTensorName(l, "self_attn.q_proj.weight"), {c.q_dim(), H}));
    MOE_ASSIGN_OR_RETURN(a.wk, Read(ckpt, LayerTensorName(l, "self_attn.k_proj.weight"), {c.kv_dim(), H}));
    MOE_ASSIGN_OR_RETURN(a.wv, Read(ckpt, LayerTensorName(l, "self_attn.v_proj.weight"), {c.kv_dim(), H}));
    MOE_ASSIGN_OR_RETURN(a.wo, Read(ckpt, LayerTensorName(l, "self_attn.o_proj.weight"), {H, c.q_dim()}));

    MoeWeights& m = w.moe[l];
    MOE_ASSIGN_OR_RETURN(m.norm, Read(ckpt, LayerTensorName(l, "post_attention_layernorm.weight"), {H}));
    MOE_ASSIGN_OR_RETURN(m.router,
                         Read(ckpt, LayerTensorName(l, "block_sparse_moe.gate.weight"), {c.num_experts, H}));
    for (int64_t e = 0; e < c.num_experts; ++e) {
      if (!holds(l, e)) continue;
      ExpertWeights ew;
      const std::vector<int64_t> half{I, H};
      for (const char* w : {"w1", "w3"}) MOE_RETURN_IF_ERROR(ckpt.GetF32Readable(ExpertTensorName(l, e, w), half).status());
      ew.w13.resize(static_cast<size_t>(2 * I * H));
      MOE_RETURN_IF_ERROR(ReadInto(ckpt, ExpertTensorName(l, e, "w1"), half, ew.w13.data()));
      MOE_RETURN_IF_ERROR(ReadInto(ckpt, ExpertTensorName(l, e, "w3"), half, ew.w13.data() + I * H));
      MOE_ASSIGN_OR_RETURN(ew.w2, Read(ckpt, ExpertTensorName(l, e, "w2"), {H, I}));
      m.experts.emplace(e, std::move(ew));
    }
    if (progress) progress(l + 1, c.num_layers);
  }
  return w;
}

}  // namespace moe
