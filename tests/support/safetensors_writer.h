// Test support: writes safetensors files and checkpoint folders, so tests can build small models
// and deliberately broken files without Python.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/safetensors.h"

namespace moe {

// One tensor to write. `values` (numel of them, row-major) are encoded to `dtype` for F32, BF16
// (round to nearest even) and F16; for every other dtype `values` is ignored and the tensor's
// bytes are zeros, which is enough to test that such tensors are refused.
struct NamedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// Writes one .safetensors file: tensors laid out in the given order, header padded to 8 bytes.
absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint folder (created if needed). One shard: DIR/model.safetensors and no index.
// Several: DIR/model-0000i-of-0000n.safetensors plus model.safetensors.index.json with
// "metadata": {"total_size": ...} and "weight_map".
absl::Status WriteShardedCheckpoint(const std::string& dir,
                                    const std::vector<std::vector<NamedTensor>>& shards);

// Writes a file with an arbitrary (possibly invalid) header: the 8-byte little-endian length of
// `header` (or `declared_header_len` when given), `header` itself, then `data_bytes` zero bytes.
absl::Status WriteRawSafetensors(const std::string& path, const std::string& header,
                                 uint64_t data_bytes,
                                 std::optional<uint64_t> declared_header_len = std::nullopt);

// Overwrites element `index` (row-major) of tensor `name` in a checkpoint folder's files with
// `value` in the tensor's dtype (F32, BF16, F16): a damaged copy of a real checkpoint.
absl::Status SetCheckpointValue(const std::string& dir, const std::string& name, int64_t index, float value);

// The f16 bit pattern nearest to `f` (round to nearest even); inf/nan kept, overflow to inf.
uint16_t F32ToF16(float f);

}  // namespace moe
