#include "worker/model/weights.h"

#include <cmath>
#include <new>
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

absl::StatusOr<std::vector<float>> Read(const Checkpoint& ckpt, const TensorSpec& spec) {
  const std::string& name = spec.name;
  const std::vector<int64_t>& shape = spec.shape;
  // The file's tensor first: a config.json whose sizes the checkpoint does not have is refused
  // before they size the buffer (a vocab_size of 2^31 was std::bad_alloc, naming nothing).
  MOE_RETURN_IF_ERROR(ckpt.GetF32Readable(name, shape).status());
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out;
  try {
    out.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {  // said as such, naming the tensor, not as std::bad_alloc
    MOE_ASSIGN_OR_RETURN(TensorView t, ckpt.Get(name));
    return absl::ResourceExhaustedError(absl::StrCat("out of host memory for ", name, " (", t.file, "): ",
                                                     n * static_cast<int64_t>(sizeof(float)), " bytes as float32"));
  }
  MOE_RETURN_IF_ERROR(ReadInto(ckpt, name, shape, out.data()));
  return out;
}

int64_t Bytes(const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); }

}  // namespace

namespace {

std::string LayerTensorName(int64_t layer, const std::string& suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

}  // namespace

ModelTensorSpecs ModelTensors(const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  return {{"model.embed_tokens.weight", {V, H}}, {"model.norm.weight", {H}}, {"lm_head.weight", {V, H}}};
}

LayerTensorSpecs LayerTensors(const ModelConfig& c, int64_t layer) {
  const int64_t H = c.hidden_size;
  auto t = [&](const char* suffix, std::vector<int64_t> shape) {
    return TensorSpec{LayerTensorName(layer, suffix), std::move(shape)};
  };
  return {t("input_layernorm.weight", {H}),
          t("self_attn.q_proj.weight", {c.q_dim(), H}),
          t("self_attn.k_proj.weight", {c.kv_dim(), H}),
          t("self_attn.v_proj.weight", {c.kv_dim(), H}),
          t("self_attn.o_proj.weight", {H, c.q_dim()}),
          t("post_attention_layernorm.weight", {H}),
          t("block_sparse_moe.gate.weight", {c.num_experts, H})};
}

ExpertTensorSpecs ExpertTensors(const ModelConfig& c, int64_t layer, int64_t expert) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  auto t = [&](const char* w, std::vector<int64_t> shape) {
    return TensorSpec{absl::StrCat("model.layers.", layer, ".block_sparse_moe.experts.", expert, ".", w, ".weight"),
                      std::move(shape)};
  };
  return {t("w1", {I, H}), t("w3", {I, H}), t("w2", {H, I})};
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
  const ModelTensorSpecs m = ModelTensors(c);
  std::set<std::string> expected = {m.embed.name, m.final_norm.name, m.lm_head.name};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerTensorSpecs t = LayerTensors(c, l);
    for (const TensorSpec* s : {&t.input_norm, &t.q, &t.k, &t.v, &t.o, &t.post_norm, &t.router}) expected.insert(s->name);
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const ExpertTensorSpecs x = ExpertTensors(c, l, e);
      for (const TensorSpec* s : {&x.w1, &x.w3, &x.w2}) expected.insert(s->name);
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
                                         const LoadProgress& progress) {
  MOE_RETURN_IF_ERROR(CheckCheckpointHoldsOnlyTheModel(c, ckpt));
  ModelWeights w;
  const ModelTensorSpecs mt = ModelTensors(c);
  MOE_ASSIGN_OR_RETURN(w.embed, Read(ckpt, mt.embed));
  MOE_ASSIGN_OR_RETURN(w.final_norm, Read(ckpt, mt.final_norm));
  if (!c.tie_word_embeddings) {
    MOE_ASSIGN_OR_RETURN(w.lm_head, Read(ckpt, mt.lm_head));
  }
  w.attention.resize(c.num_layers);
  w.moe.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerTensorSpecs t = LayerTensors(c, l);
    AttentionWeights& a = w.attention[l];
    MOE_ASSIGN_OR_RETURN(a.norm, Read(ckpt, t.input_norm));
    MOE_ASSIGN_OR_RETURN(a.wq, Read(ckpt, t.q));
    MOE_ASSIGN_OR_RETURN(a.wk, Read(ckpt, t.k));
    MOE_ASSIGN_OR_RETURN(a.wv, Read(ckpt, t.v));
    MOE_ASSIGN_OR_RETURN(a.wo, Read(ckpt, t.o));

    MoeWeights& m = w.moe[l];
    MOE_ASSIGN_OR_RETURN(m.norm, Read(ckpt, t.post_norm));
    MOE_ASSIGN_OR_RETURN(m.router, Read(ckpt, t.router));
    for (int64_t e = 0; e < c.num_experts; ++e) {
      if (!holds(l, e)) continue;
      const ExpertTensorSpecs x = ExpertTensors(c, l, e);
      ExpertWeights ew;
      for (const TensorSpec* s : {&x.w1, &x.w3}) MOE_RETURN_IF_ERROR(ckpt.GetF32Readable(s->name, s->shape).status());
      const size_t half = static_cast<size_t>(x.w1.shape[0] * x.w1.shape[1]);
      ew.w13.resize(2 * half);
      MOE_RETURN_IF_ERROR(ReadInto(ckpt, x.w1.name, x.w1.shape, ew.w13.data()));
      MOE_RETURN_IF_ERROR(ReadInto(ckpt, x.w3.name, x.w3.shape, ew.w13.data() + half));
      MOE_ASSIGN_OR_RETURN(ew.w2, Read(ckpt, x.w2));
      m.experts.emplace(e, std::move(ew));
    }
    if (progress) MOE_RETURN_IF_ERROR(progress(l + 1, c.num_layers));
  }
  return w;
}

}  // namespace moe
