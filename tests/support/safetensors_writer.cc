#include "tests/support/safetensors_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/support/parallel_for.h"

namespace moe {
namespace {

using nlohmann::ordered_json;

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError("cannot create " + path);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

std::string LittleEndian64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}


// The tensor's element count and byte size, checking its shape and (float dtypes) its values.
absl::StatusOr<uint64_t> TensorBytes(const NamedTensor& t) {
  int64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return absl::InvalidArgumentError("tensor '" + t.name + "': negative dimension");
    numel *= d;
  }
  const bool is_float = t.dtype == DType::kF32 || t.dtype == DType::kBF16 || t.dtype == DType::kF16;
  if (is_float && static_cast<int64_t>(t.values.size()) != numel) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", t.values.size(),
                                                   " values for ", numel, " elements"));
  }
  return static_cast<uint64_t>(numel) * DTypeSize(t.dtype);
}

// The tensor's bytes in its dtype (zeros for the non-float dtypes), into `out` (its capacity is
// reused from tensor to tensor: a full-size layer's tensors are gigabytes).
void Encode(const NamedTensor& t, uint64_t bytes, std::string& out) {
  out.clear();
  const bool is_float = t.dtype == DType::kF32 || t.dtype == DType::kBF16 || t.dtype == DType::kF16;
  if (!is_float) {
    out.resize(static_cast<size_t>(bytes), '\0');
    return;
  }
  out.resize(static_cast<size_t>(bytes));
  const size_t width = DTypeSize(t.dtype), n = t.values.size();
  constexpr size_t kRun = size_t{1} << 20;  // runs of values converted on all cores
  testing_ref::ParallelFor(static_cast<int64_t>((n + kRun - 1) / kRun), [&](int64_t r) {
    for (size_t i = static_cast<size_t>(r) * kRun; i < std::min(n, static_cast<size_t>(r + 1) * kRun); ++i) {
      const float v = t.values[i];
      char* at = out.data() + i * width;
      if (t.dtype == DType::kF32) std::memcpy(at, &v, sizeof v);  // the host is little-endian, like the format
      if (t.dtype == DType::kBF16) {
        const uint16_t h = F32ToBf16(v);
        std::memcpy(at, &h, sizeof h);
      }
      if (t.dtype == DType::kF16) {
        const uint16_t h = F32ToF16(v);
        std::memcpy(at, &h, sizeof h);
      }
    }
  });
}

// Writes one safetensors file: the header (8-byte length, JSON with each tensor's dtype, shape and
// data offsets, padded with spaces so the data starts 8-byte aligned, as the reference writer
// does), then each tensor's bytes in order, one at a time. `data_size` receives the data's size.
absl::Status WriteTensorsFile(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata, uint64_t* data_size) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    MOE_ASSIGN_OR_RETURN(const uint64_t bytes, TensorBytes(t));
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError("cannot create " + path);
  const std::string prefix = LittleEndian64(text.size()) + text;
  out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  std::string bytes;
  for (size_t i = 0; i < tensors.size() && out; ++i) {
    Encode(tensors[i], sizes[i], bytes);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  if (data_size != nullptr) *data_size = offset;
  return absl::OkStatus();
}

std::string ShardName(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

}  // namespace

uint16_t F32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00 | static_cast<uint16_t>((abs >> 13) & 0x3ff);  // nan
  if (abs >= 0x47800000u) return sign | 0x7c00;  // >= 65536 (or inf): beyond rounding range
  if (abs < 0x38800000u) {
    // Below the smallest normal (2^-14): a subnormal, in units of 2^-24. nearbyint rounds half
    // to even in the default rounding mode, and the product is exact in float.
    float mag;
    std::memcpy(&mag, &abs, sizeof mag);
    return sign | static_cast<uint16_t>(std::nearbyint(mag * 16777216.0f));
  }
  // Normal: rebias the exponent, then round the 13 dropped mantissa bits to nearest even. A carry
  // into the exponent is correct, including up to inf (0x7c00).
  uint32_t h = ((abs >> 23) - 127 + 15) << 10 | ((abs >> 13) & 0x3ff);
  const uint32_t rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  return WriteTensorsFile(path, tensors, metadata, nullptr);
}

absl::Status WriteShardedCheckpoint(const std::string& dir,
                                    const std::vector<std::vector<NamedTensor>>& shards) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir + ": " + ec.message());
  if (shards.size() == 1) {
    return WriteSafetensors(dir + "/model.safetensors", shards[0], {{"format", "pt"}});
  }
  ordered_json weight_map = ordered_json::object();
  uint64_t total_size = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = ShardName(i, shards.size());
    uint64_t data_size = 0;
    MOE_RETURN_IF_ERROR(WriteTensorsFile(dir + "/" + name, shards[i], {{"format", "pt"}}, &data_size));
    total_size += data_size;
    for (const NamedTensor& t : shards[i]) weight_map[t.name] = name;
  }
  ordered_json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  return WriteFile(dir + "/model.safetensors.index.json", index.dump(2));
}

absl::Status WriteRawSafetensors(const std::string& path, const std::string& header,
                                 uint64_t data_bytes, std::optional<uint64_t> declared_header_len) {
  uint64_t len = declared_header_len.value_or(header.size());
  return WriteFile(path, LittleEndian64(len) + header + std::string(data_bytes, '\0'));
}

absl::Status SetCheckpointValue(const std::string& dir, const std::string& name, int64_t index, float value) {
  std::string file = "model.safetensors";
  if (std::ifstream in(dir + "/model.safetensors.index.json"); in) {
    const ordered_json index_json = ordered_json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!index_json.contains("weight_map") || !index_json["weight_map"].contains(name)) {
      return absl::NotFoundError(absl::StrCat(name, " is not in ", dir, "'s index"));
    }
    file = index_json["weight_map"][name].get<std::string>();
  }
  const std::string path = dir + "/" + file;
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header_len = 0;
  if (!f.read(reinterpret_cast<char*>(&header_len), 8)) return absl::NotFoundError("cannot read " + path);
  std::string header(header_len, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  const ordered_json h = ordered_json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (!h.is_object() || !h.contains(name)) return absl::NotFoundError(absl::StrCat(name, " is not in ", path));
  const std::string dtype = h[name]["dtype"].get<std::string>();
  std::string bytes;
  if (dtype == "F32") {
    bytes.assign(reinterpret_cast<const char*>(&value), 4);
  } else if (dtype == "BF16" || dtype == "F16") {
    const uint16_t bits = dtype == "BF16" ? F32ToBf16(value) : F32ToF16(value);
    bytes.assign(reinterpret_cast<const char*>(&bits), 2);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(name, " has dtype ", dtype));
  }
  const uint64_t begin = h[name]["data_offsets"][0].get<uint64_t>();
  f.seekp(static_cast<std::streamoff>(8 + header_len + begin + static_cast<uint64_t>(index) * bytes.size()));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return f ? absl::OkStatus() : absl::InternalError("cannot write " + path);
}

}  // namespace moe
