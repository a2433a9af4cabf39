#include "worker/gpu/device_weights.h"

#include <cmath>
#include <string>

#include "worker/gpu/random_fill.h"

namespace moe::gpu {
namespace {

// Tensors start on 256-byte boundaries in the arena.
constexpr int64_t kAlign = 128;  // bf16 elements
int64_t Aligned(int64_t elements) { return (elements + kAlign - 1) / kAlign * kAlign; }

}  // namespace

// One checkpoint tensor (or, synthetic, one random fill) inside a slot.
struct DeviceWeights::Part {
  std::string name;
  std::vector<int64_t> shape;
  float mean = 0.f, std = 1.f;  // synthetic values: mean + std * N(0, 1)
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// One device tensor: its parts stacked row-wise, at `offset` elements into the arena.
struct DeviceWeights::Slot {
  std::vector<Part> parts;
  const bf16** dst = nullptr;
  int64_t layer = -1;  // the layer it belongs to (-1: embeddings, final norm, LM head)
  bool expert = false;
  int64_t offset = 0;
};

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Plan(const ModelConfig& c, const ExpertFilter& holds,
                                                                   std::vector<Slot>& slots, const Checkpoint* check) {
  std::unique_ptr<DeviceWeights> w(new DeviceWeights());
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  // Scales as in tests/support/random_model.cc: a bias-free linear layer [out, in] gets std
  // gain/sqrt(in), so each output stays O(1) for O(1) inputs; norms are near (not exactly) one.
  auto linear = [](const TensorSpec& t, double gain = 1.0) {  // t.shape: [out, in]
    return Part{t.name, t.shape, 0.f, static_cast<float>(gain / std::sqrt(static_cast<double>(t.shape[1])))};
  };
  auto norm = [](const TensorSpec& t) { return Part{t.name, t.shape, 1.f, 0.1f}; };
  auto add = [&](std::vector<Part> parts, const bf16** dst, int64_t layer, bool expert) {
    slots.push_back(Slot{std::move(parts), dst, layer, expert, 0});
  };

  const ModelTensorSpecs mt = ModelTensors(c);
  w->attention.resize(static_cast<size_t>(c.num_layers));
  w->moe.resize(static_cast<size_t>(c.num_layers));
  add({Part{mt.embed.name, mt.embed.shape, 0.f, 1.f}}, &w->embed, -1, false);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerTensorSpecs t = LayerTensors(c, l);
    DeviceAttentionWeights& a = w->attention[l];
    add({norm(t.input_norm)}, &a.norm, l, false);
    add({linear(t.q), linear(t.k), linear(t.v)}, &a.wqkv, l, false);
    add({linear(t.o)}, &a.wo, l, false);
    DeviceMoeWeights& m = w->moe[l];
    m.experts.resize(static_cast<size_t>(E));
    add({norm(t.post_norm)}, &m.norm, l, false);
    // The 3x router gain of random_model.cc spreads the router logits, so routing is not uniform.
    add({linear(t.router, 3.0)}, &m.router, l, false);
    for (int64_t e = 0; e < E; ++e) {
      if (!holds(l, e)) continue;
      const ExpertTensorSpecs x = ExpertTensors(c, l, e);
      DeviceExpertWeights& d = m.experts[e];
      add({linear(x.w1), linear(x.w3)}, &d.w13, l, true);
      add({linear(x.w2)}, &d.w2, l, true);
    }
  }
  add({norm(mt.final_norm)}, &w->final_norm, -1, false);
  if (!c.tie_word_embeddings) add({linear(mt.lm_head)}, &w->lm_head, -1, false);

  // Every tensor the arena will hold is in the checkpoint with the config's shape before the config
  // sizes the arena: a config.json the checkpoint disagrees with is named by a tensor, not by an
  // allocation that failed.
  if (check != nullptr) {
    for (const Slot& s : slots) {
      for (const Part& p : s.parts) MOE_RETURN_IF_ERROR(check->GetF32Readable(p.name, p.shape).status());
    }
  }
  int64_t total = 0;
  for (Slot& s : slots) {
    s.offset = total;
    int64_t n = 0;
    for (const Part& p : s.parts) n += p.numel();
    w->bytes_ += 2 * n;
    if (s.expert) w->expert_bytes_ += 2 * n;
    total += Aligned(n);
  }
  w->expert_stride_ = Aligned(2 * I * H) + Aligned(H * I);  // an expert's slots: w13, then w2
  try {
    w->arena_ = DeviceBuffer<bf16>(static_cast<size_t>(total));
  } catch (const CudaError& err) {
    (void)cudaGetLastError();  // clear the allocation error
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", 2 * total, " bytes of device memory for the weights (",
                                                     free_b, " of ", total_b, " bytes free): ", err.what()));
  }
  for (Slot& s : slots) *s.dst = w->arena_.get() + s.offset;
  if (c.tie_word_embeddings) w->lm_head = w->embed;
  return w;
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Upload(
    const ModelConfig& c, const Checkpoint& ckpt, const ExpertFilter& holds,
    const LoadProgress& progress) {
  MOE_RETURN_IF_ERROR(CheckCheckpointHoldsOnlyTheModel(c, ckpt));
  std::vector<Slot> slots;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<DeviceWeights> w, Plan(c, holds, slots, &ckpt));
  std::vector<uint16_t> staging;
  DeviceBuffer<unsigned long long> first_bad(1);
  int64_t last_layer = -1;
  for (const Slot& s : slots) {
    // Slots come in layer order; the final norm and LM head (layer -1) come last.
    if (progress && s.layer != last_layer && last_layer >= 0) MOE_RETURN_IF_ERROR(progress(last_layer + 1, c.num_layers));
    last_layer = s.layer;
    bf16* dst = w->arena_.get() + s.offset;
    for (const Part& p : s.parts) {
      MOE_ASSIGN_OR_RETURN(const TensorView t, ckpt.GetF32Readable(p.name, p.shape));  // BF16, F16 or F32
      const size_t n = static_cast<size_t>(p.numel());
      if (t.dtype == DType::kBF16) {
        MOE_CUDA_CHECK(cudaMemcpy(dst, t.data, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
      } else {
        staging.resize(n);
        if (t.dtype == DType::kF32) {
          const float* f = reinterpret_cast<const float*>(t.data);
          for (size_t i = 0; i < n; ++i) staging[i] = F32ToBf16(f[i]);
        } else {
          const uint16_t* h = reinterpret_cast<const uint16_t*>(t.data);
          for (size_t i = 0; i < n; ++i) staging[i] = F32ToBf16(F16ToF32(h[i]));
        }
        MOE_CUDA_CHECK(cudaMemcpy(dst, staging.data(), n * sizeof(uint16_t), cudaMemcpyHostToDevice));
      }
      // Every value finite, as the host loader checks (a NaN weight would make every answer it
      // touches NaN): checked on the device, in bf16 (an F32 value past bf16's range is caught too).
      FirstNonFinite(dst, static_cast<int64_t>(n), first_bad.get(), nullptr);
      unsigned long long first = 0;
      MOE_CUDA_CHECK(cudaMemcpy(&first, first_bad.get(), sizeof first, cudaMemcpyDeviceToHost));
      if (first != ~0ull) {
        uint16_t bits = 0;
        MOE_CUDA_CHECK(cudaMemcpy(&bits, dst + first, sizeof bits, cudaMemcpyDeviceToHost));
        return NonFiniteWeightError(p.name, t.file, p.shape, static_cast<int64_t>(first), Bf16ToF32(bits));
      }
      dst += n;
    }
  }
  return w;
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Synthetic(const ModelConfig& c, const ExpertFilter& holds,
                                                                        uint64_t seed) {
  std::vector<Slot> slots;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<DeviceWeights> w, Plan(c, holds, slots));
  for (const Slot& s : slots) {
    bf16* dst = w->arena_.get() + s.offset;
    for (const Part& p : s.parts) {
      FillNormal(dst, p.numel(), seed, TensorKey(p.name), p.mean, p.std, nullptr);
      dst += p.numel();
    }
  }
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  return w;
}

}  // namespace moe::gpu
