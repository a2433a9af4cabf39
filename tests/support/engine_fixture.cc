#include "tests/support/engine_fixture.h"

#include <cmath>
#include <cstring>

#include "common/json_util.h"

namespace moe::testing_ref {

Golden Golden::Load(const std::string& dir) {
  Golden g;
  g.expected = ValueOrThrow(ReadJsonFile(dir + "/expected.json"));
  g.tensors = ValueOrThrow(SafetensorsFile::Open(dir + "/expected.safetensors"));
  return g;
}

std::vector<float> Golden::F32(const std::string& name) const {
  const TensorView& v = tensors->tensors().at(name);
  MOE_CHECK(v.dtype == DType::kF32, name);
  std::vector<float> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

double TopTwoGap(const float* row, int64_t V) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < V; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return static_cast<double>(a) - b;
}

std::vector<double> Golden::GreedyMargins(size_t p) const {
  const std::string name = "greedy_logits." + std::to_string(p);
  const std::vector<float> logits = F32(name);
  const int64_t V = tensors->tensors().at(name).shape.back();
  std::vector<double> margins;
  for (size_t row = 0; row * V < logits.size(); ++row) margins.push_back(TopTwoGap(logits.data() + row * V, V));
  return margins;
}

}  // namespace moe::testing_ref
