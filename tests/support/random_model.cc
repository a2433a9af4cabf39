#include "tests/support/random_model.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <random>
#include <stdexcept>

#include "tests/support/parallel_for.h"
#include "tests/support/safetensors_writer.h"

namespace moe::testing_ref {
namespace {

// Standard normal samples from a generator seeded by (seed, tensor name). The Box-Muller transform
// is written out instead of std::normal_distribution, whose algorithm the standard leaves to each
// library: this way a seed means the same model on every toolchain.
class NormalStream {
 public:
  NormalStream(uint64_t seed, const std::string& name) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
    std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                      static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32)};
    rng_.seed(seq);
  }

  double Next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1] so the log is finite; u2 in [0, 1).
    const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    have_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool have_spare_ = false;
};

// Builds the tensors in Hub order, each filled as mean + std * N(0, 1).
class TensorMaker {
 public:
  TensorMaker(uint64_t seed, DType dtype) : seed_(seed), dtype_(dtype) {}

  void Add(const std::string& name, std::vector<int64_t> shape, double mean, double std) {
    tensors_.push_back({name, dtype_, std::move(shape), {}});
    fills_.push_back({mean, std});
  }
  // A bias-free linear layer [out, in]: std 1/sqrt(in) keeps each output O(1) for O(1) inputs.
  void Linear(const std::string& name, int64_t out, int64_t in, double gain = 1.0) {
    Add(name, {out, in}, 0.0, gain / std::sqrt(static_cast<double>(in)));
  }
  // An RMSNorm weight: near one, but not exactly, so a dropped norm weight shows in the output.
  void Norm(const std::string& name, int64_t n) { Add(name, {n}, 1.0, 0.1); }

  // Fills every tensor and hands them over. A tensor of up to kChunk values comes from one stream
  // seeded by its name; a larger one (a full-size layer has billions of values) from one stream a
  // chunk of kChunk, seeded by "name#chunk", so that the chunks fill on as many cores as there are.
  std::vector<NamedTensor> Take() {
    struct Piece {
      size_t tensor;
      int64_t begin, end;
      std::string stream;
    };
    std::vector<Piece> pieces;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      NamedTensor& t = tensors_[i];
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      t.values.resize(static_cast<size_t>(n));
      if (n <= kChunk) {
        pieces.push_back({i, 0, n, t.name});
        continue;
      }
      for (int64_t b = 0; b < n; b += kChunk) {
        pieces.push_back({i, b, std::min(n, b + kChunk), t.name + "#" + std::to_string(b / kChunk)});
      }
    }
    ParallelFor(static_cast<int64_t>(pieces.size()), [&](int64_t p) {
      const Piece& piece = pieces[static_cast<size_t>(p)];
      NamedTensor& t = tensors_[piece.tensor];
      NormalStream rng(seed_, piece.stream);
      const auto [mean, std] = fills_[piece.tensor];
      for (int64_t j = piece.begin; j < piece.end; ++j) t.values[j] = static_cast<float>(mean + std * rng.Next());
    });
    return std::move(tensors_);
  }
  static constexpr int64_t kChunk = int64_t{1} << 24;

 private:
  struct Fill {
    double mean, std;
  };
  uint64_t seed_;
  DType dtype_;
  std::vector<NamedTensor> tensors_;
  std::vector<Fill> fills_;
};

std::vector<NamedTensor> MakeTensors(const ModelConfig& c, uint64_t seed, DType dtype) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  TensorMaker m(seed, dtype);
  m.Add("model.embed_tokens.weight", {c.vocab_size, H}, 0.0, 1.0);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.Norm(p + "input_layernorm.weight", H);
    m.Linear(p + "self_attn.q_proj.weight", c.q_dim(), H);
    m.Linear(p + "self_attn.k_proj.weight", c.kv_dim(), H);
    m.Linear(p + "self_attn.v_proj.weight", c.kv_dim(), H);
    m.Linear(p + "self_attn.o_proj.weight", H, c.q_dim());
    m.Norm(p + "post_attention_layernorm.weight", H);
    // A 3x router gain spreads the router logits so top-k choices have clear margins.
    m.Linear(p + "block_sparse_moe.gate.weight", E, H, 3.0);
    for (int64_t e = 0; e < E; ++e) {
      const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      m.Linear(q + "w1.weight", I, H);
      m.Linear(q + "w2.weight", H, I);
      m.Linear(q + "w3.weight", I, H);
    }
  }
  m.Norm("model.norm.weight", H);
  if (!c.tie_word_embeddings) m.Linear("lm_head.weight", c.vocab_size, H);
  return m.Take();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteRandomModel(const std::string& dir, const ModelConfig& c, uint64_t seed,
                              int num_shards, DType dtype) {
  if (dtype != DType::kBF16 && dtype != DType::kF16 && dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("WriteRandomModel: dtype ", DTypeName(dtype),
                                                   " is not BF16, F16 or F32"));
  }
  std::vector<NamedTensor> tensors = MakeTensors(c, seed, dtype);
  if (num_shards < 1 || static_cast<size_t>(num_shards) > tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("WriteRandomModel: ", num_shards, " shards for ",
                                                   tensors.size(), " tensors"));
  }
  // Contiguous, near-equal runs of tensors in Hub order, as Hub shards are: a layer's tensors
  // may straddle two files, which readers must handle. No shard is empty.
  const size_t n = tensors.size(), k = static_cast<size_t>(num_shards);
  std::vector<std::vector<NamedTensor>> shards(k);
  for (size_t i = 0; i < n; ++i) shards[i * k / n].push_back(std::move(tensors[i]));
  MOE_RETURN_IF_ERROR(WriteShardedCheckpoint(dir, shards));
  return WriteText(dir + "/config.json", c.ToJson().dump(2));
}

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + tmpl);
  }
  return tmpl;
}

}  // namespace moe::testing_ref
