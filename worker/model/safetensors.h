// Memory-mapped safetensors checkpoints: one file, or shards listed by model.safetensors.index.json.
// Every header entry is validated when a file is opened (dtype known, shape * element size equal to
// the byte range, range inside the file), so reading a tensor afterwards cannot go out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace moe {

enum class DType { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64, kF8E4M3, kF8E5M2 };

const char* DTypeName(DType d);
size_t DTypeSize(DType d);

// A tensor inside a mapped file. `data` stays valid while its SafetensorsFile / Checkpoint lives.
struct TensorView {
  std::string name;
  std::string file;  // path of the file holding it, for error messages
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A model folder's weights: DIR/model.safetensors, or DIR/model.safetensors.index.json and its shards.
// Shards are opened lazily, so a rank that needs tensors from few shards maps only those.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  bool Has(const std::string& name) const;
  std::vector<std::string> Names() const;

  // The tensor's view; NotFound names the tensor and the folder.
  absl::StatusOr<TensorView> Get(const std::string& name) const;

  // The tensor's view once it is there with exactly `shape` and a dtype ReadF32 converts (BF16,
  // F16, F32): callers check before they allocate what the shape sizes. Errors name the tensor and
  // its file.
  absl::StatusOr<TensorView> GetF32Readable(const std::string& name, std::span<const int64_t> shape) const;

  // GetF32Readable's checks, then the tensor converted to float32 into `out`, which holds
  // product(shape) floats.
  absl::Status ReadF32(const std::string& name, std::span<const int64_t> shape, float* out) const;

 private:
  Checkpoint() = default;
  absl::StatusOr<const SafetensorsFile*> Shard(const std::string& file) const;

  std::string dir_;
  std::map<std::string, std::string> weight_map_;  // tensor name -> file name inside dir_
  // Guards shards_: lazy opening happens inside const accessors, which loader threads may share.
  mutable std::mutex mu_;
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
};

// bf16 / f16 bit patterns to float32.
float Bf16ToF32(uint16_t bits);
float F16ToF32(uint16_t bits);
uint16_t F32ToBf16(float f);  // round to nearest even

}  // namespace moe
