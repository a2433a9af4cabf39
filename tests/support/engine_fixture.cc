#include "tests/support/engine_fixture.h"

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

}  // namespace moe::testing_ref
