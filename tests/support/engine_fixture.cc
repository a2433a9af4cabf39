#include "tests/support/engine_fixture.h"

#include <cmath>
#include <cstring>

#include "common/json_util.h"

namespace moe::testing_ref {

Golden Golden::Load() {
  Golden g;
  g.expected = ValueOrThrow(ReadJsonFile(kGoldenDir + "/expected.json"));
  g.tensors = ValueOrThrow(SafetensorsFile::Open(kGoldenDir + "/expected.safetensors"));
  return g;
}

std::vector<float> Golden::F32(const std::string& name) const {
  const TensorView& v = tensors->tensors().at(name);
  MOE_CHECK(v.dtype == DType::kF32, name);
  std::vector<float> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

std::vector<double> Golden::GreedyMargins(size_t p) const {
  const std::string name = "greedy_logits." + std::to_string(p);
  const std::vector<float> logits = F32(name);
  const int64_t V = tensors->tensors().at(name).shape.back();
  std::vector<double> margins;
  for (size_t row = 0; row * V < logits.size(); ++row) {
    const float* z = logits.data() + row * V;
    float a = -INFINITY, b = -INFINITY;
    for (int64_t i = 0; i < V; ++i) {
      if (z[i] > a) {
        b = a;
        a = z[i];
      } else if (z[i] > b) {
        b = z[i];
      }
    }
    margins.push_back(static_cast<double>(a) - b);
  }
  return margins;
}

}  // namespace moe::testing_ref
