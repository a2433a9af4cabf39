#include "worker/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/json_util.h"

namespace moe {
namespace {

using nlohmann::json;

// A header this large is certainly corrupt (real checkpoints have headers of at most a few MB);
// refusing it early avoids parsing garbage that happens to fit in the file.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "BOOL", 1},       {DType::kU8, "U8", 1},           {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},         {DType::kU16, "U16", 2},         {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},       {DType::kI32, "I32", 4},         {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},         {DType::kF64, "F64", 8},         {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},         {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

std::optional<DType> ParseDType(const std::string& name) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name) return d.dtype;
  }
  return std::nullopt;
}

const DTypeInfo* FindDType(DType d) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == d) return &info;
  }
  return nullptr;
}

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string ErrnoString(int err) { return std::strerror(err); }

// Reads a JSON integer that must be in [0, INT64_MAX]; nullopt for anything else (negative,
// fractional, too large, not a number).
std::optional<uint64_t> NonNegativeInt(const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t x = v.get<uint64_t>();
    if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return x;
  }
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < 0) return std::nullopt;
    return static_cast<uint64_t>(x);
  }
  return std::nullopt;
}

// Parses and checks one header entry. `data_size` is the size of the data region; everything is
// checked with overflow-safe arithmetic, so a hostile header cannot make a view leave the mapping.
absl::StatusOr<TensorView> ParseEntry(const std::string& path, const std::string& name,
                                      const json& entry, const std::byte* data_begin,
                                      uint64_t data_size) {
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", what));
  };
  if (!entry.is_object()) return error("header entry is not a JSON object: " + entry.dump());

  TensorView view;
  view.name = name;
  view.file = path;

  auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) return error("missing or non-string \"dtype\"");
  std::optional<DType> dtype = ParseDType(dt->get<std::string>());
  if (!dtype) {
    return error(absl::StrCat("unknown dtype \"", dt->get<std::string>(), "\""));
  }
  view.dtype = *dtype;

  auto sh = entry.find("shape");
  if (sh == entry.end() || !sh->is_array()) return error("missing or non-list \"shape\"");
  uint64_t numel = 1;
  bool numel_overflow = false;
  for (const json& d : *sh) {
    std::optional<uint64_t> dim = NonNegativeInt(d);
    if (!dim) return error("shape " + sh->dump() + " is not a list of non-negative integers");
    view.shape.push_back(static_cast<int64_t>(*dim));
    numel_overflow |= __builtin_mul_overflow(numel, *dim, &numel);
  }
  uint64_t expected_bytes = 0;
  if (numel_overflow || __builtin_mul_overflow(numel, DTypeSize(view.dtype), &expected_bytes)) {
    return error("shape " + sh->dump() + " is too large");
  }

  auto off = entry.find("data_offsets");
  if (off == entry.end() || !off->is_array() || off->size() != 2) {
    return error("missing \"data_offsets\" or not a [begin, end] pair");
  }
  std::optional<uint64_t> begin = NonNegativeInt((*off)[0]);
  std::optional<uint64_t> end = NonNegativeInt((*off)[1]);
  if (!begin || !end) return error("data_offsets " + off->dump() + " are not non-negative integers");
  if (*begin > *end) return error("data_offsets " + off->dump() + " have begin > end");
  if (*end - *begin != expected_bytes) {
    return error(absl::StrCat("data_offsets ", off->dump(), " span ", *end - *begin,
                              " bytes but shape ", ShapeString(view.shape), " of ",
                              DTypeName(view.dtype), " needs ", expected_bytes, " bytes"));
  }
  if (*end > data_size) {
    return error(absl::StrCat("data_offsets end ", *end, " is past the end of the data (",
                              data_size, " bytes; file truncated?)"));
  }
  view.data = data_begin + *begin;
  view.nbytes = static_cast<size_t>(expected_bytes);
  return view;
}

std::string JoinPath(const std::string& dir, const std::string& file) {
  if (dir.empty() || dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

// Shard names come from a JSON file; a name that could leave the model folder is refused.
bool IsSafeFileName(const std::string& f) {
  return !f.empty() && f.find('/') == std::string::npos && f.find("..") == std::string::npos &&
         f.find('\0') == std::string::npos;
}

// Loads 16-bit values with memcpy: the data region of a mapped file need not be 2-byte aligned.
template <typename Convert>
void Convert16(const std::byte* src, size_t n, float* out, Convert convert) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, sizeof bits);
    out[i] = convert(bits);
  }
}

}  // namespace

const char* DTypeName(DType d) {
  const DTypeInfo* info = FindDType(d);
  return info ? info->name : "UNKNOWN";
}

size_t DTypeSize(DType d) {
  const DTypeInfo* info = FindDType(d);
  return info ? info->size : 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float Bf16ToF32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

float F16ToF32(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t exp = (bits >> 10) & 0x1f;
  uint32_t mant = bits & 0x3ff;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf, or nan with its payload kept
  } else if (exp != 0) {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;  // signed zero
  } else {
    // Subnormal: mant * 2^-24. Shift the leading one up to the implicit-bit position; each shift
    // lowers the exponent from that of 2^-14, the smallest normal.
    uint32_t e = 127 - 14;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    u = sign | (e << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: truncating could clear every mantissa bit left and make it inf; force the quiet bit.
    return static_cast<uint16_t>((u >> 16) | 0x0040);
  }
  // Round to nearest, ties to even: add just under half an ulp, plus one when the kept lsb is odd.
  // A carry into the exponent is the correct rounding (up to inf for the largest values).
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // A directory, FIFO or device is named as such; O_NONBLOCK: a FIFO put there between this check
  // and the open is refused below (fstat) rather than waited on.
  MOE_RETURN_IF_ERROR(CheckRegularFile(path));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat("cannot open ", path, ": ", ErrnoString(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ErrnoString(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", file_size, " bytes, too short for the 8-byte header length"));
  }

  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", ErrnoString(map_err)));
  }

  // From here on the destructor unmaps, whichever way this function returns.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = file_size;
  const std::byte* bytes = static_cast<const std::byte*>(map);

  uint8_t len_bytes[8];
  std::memcpy(len_bytes, bytes, 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian
  if (header_len > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " is larger than the file (", file_size,
                                                   " bytes; file truncated or not safetensors?)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " is implausibly large (limit ",
                                                   kMaxHeaderBytes, ")"));
  }

  const char* header_text = reinterpret_cast<const char*>(bytes + 8);
  absl::StatusOr<json> parsed = ParseJson(std::string_view(header_text, header_len));
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": header: ", parsed.status().message()));
  json header = *std::move(parsed);
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a JSON object"));
  }

  const std::byte* data_begin = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": __metadata__ is not a JSON object"));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": __metadata__ value for '", key, "' is not a string: ", value.dump()));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    MOE_ASSIGN_OR_RETURN(TensorView view, ParseEntry(path, name, entry, data_begin, data_size));
    file->tensors_.emplace(name, std::move(view));
  }
  // The tensors tile the data from its start to its end, in some order, as the format has it (the
  // safetensors library refuses other files): two tensors sharing bytes would read each other's.
  // By start, then size: an empty tensor at a full one's start comes first, as the library orders them.
  std::vector<std::tuple<uint64_t, size_t, const std::string*>> starts;
  for (const auto& [name, view] : file->tensors_) {
    starts.emplace_back(static_cast<uint64_t>(view.data - data_begin), view.nbytes, &name);
  }
  std::sort(starts.begin(), starts.end());
  uint64_t covered = 0;
  for (const auto& [start, bytes, name] : starts) {
    if (start != covered) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", *name, "' starts at byte ", start,
                                                     " of the data, where ", covered, " was expected (the tensors ",
                                                     start < covered ? "overlap" : "leave a gap", ")"));
    }
    covered += bytes;
  }
  if (covered != data_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the tensors cover ", covered, " of the data's ", data_size,
                                                   " bytes"));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = model_dir;

  const std::string index_path = JoinPath(model_dir, "model.safetensors.index.json");
  const std::string single_path = JoinPath(model_dir, "model.safetensors");
  // The index where there is one, else the single file; either, there but no file (a directory, a
  // FIFO), is named as such by its reader (ReadJsonFile, SafetensorsFile::Open) rather than as missing.
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) {
    MOE_ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": missing \"weight_map\" object"));
    }
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map entry for tensor '", name, "' is not a string"));
      }
      std::string f = file.get<std::string>();
      if (!IsSafeFileName(f)) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry for tensor '", name, "' names file '", f,
                         "', which is not a plain file name inside the model folder"));
      }
      ckpt->weight_map_.emplace(name, std::move(f));
    }
    // Shards are mapped lazily, but a missing one is reported now rather than mid-load.
    std::map<std::string, std::string> first_tensor;  // shard -> a tensor it should hold
    for (const auto& [name, file] : ckpt->weight_map_) first_tensor.emplace(file, name);
    for (const auto& [file, name] : first_tensor) {
      if (const absl::Status shard = CheckRegularFile(JoinPath(model_dir, file)); !shard.ok()) {
        return absl::Status(shard.code(), absl::StrCat(index_path, ": shard '", file, "' (holding e.g. tensor '", name,
                                                       "'): ", shard.message()));
      }
    }
  } else if (std::filesystem::exists(single_path, ec)) {
    // A single file: its header is the weight map, so it is opened now.
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
    for (const auto& [name, view] : file->tensors()) {
      ckpt->weight_map_.emplace(name, "model.safetensors");
    }
    ckpt->shards_.emplace("model.safetensors", std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat("no safetensors checkpoint in ", model_dir,
                                            ": neither model.safetensors.index.json nor "
                                            "model.safetensors exists"));
  }
  return ckpt;
}

bool Checkpoint::Has(const std::string& name) const { return weight_map_.count(name) > 0; }

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(weight_map_.size());
  for (const auto& [name, file] : weight_map_) names.push_back(name);
  return names;
}

absl::StatusOr<const SafetensorsFile*> Checkpoint::Shard(const std::string& file) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shards_.find(file);
  if (it != shards_.end()) return it->second.get();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> shard,
                       SafetensorsFile::Open(JoinPath(dir_, file)));
  // map nodes are stable, so the pointer outlives later insertions.
  return shards_.emplace(file, std::move(shard)).first->second.get();
}

absl::StatusOr<TensorView> Checkpoint::Get(const std::string& name) const {
  auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in checkpoint ", dir_));
  }
  MOE_ASSIGN_OR_RETURN(const SafetensorsFile* shard, Shard(it->second));
  auto t = shard->tensors().find(name);
  if (t == shard->tensors().end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' is listed in ", dir_,
                                            "/model.safetensors.index.json under ", shard->path(),
                                            ", but that file does not contain it"));
  }
  return t->second;
}

absl::StatusOr<TensorView> Checkpoint::GetF32Readable(const std::string& name, std::span<const int64_t> shape) const {
  MOE_ASSIGN_OR_RETURN(TensorView t, Get(name));
  if (t.dtype != DType::kBF16 && t.dtype != DType::kF16 && t.dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", t.file,
                                                   " has dtype ", DTypeName(t.dtype),
                                                   "; supported: BF16, F16, F32"));
  }
  if (!std::equal(shape.begin(), shape.end(), t.shape.begin(), t.shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", t.file,
                                                   " has shape ", ShapeString(t.shape),
                                                   ", expected ", ShapeString(shape)));
  }
  return t;
}

absl::Status Checkpoint::ReadF32(const std::string& name, std::span<const int64_t> shape, float* out) const {
  MOE_ASSIGN_OR_RETURN(const TensorView t, GetF32Readable(name, shape));
  const size_t n = static_cast<size_t>(t.numel());
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out, t.data, n * sizeof(float));
      break;
    case DType::kBF16:
      Convert16(t.data, n, out, Bf16ToF32);
      break;
    case DType::kF16:
      Convert16(t.data, n, out, F16ToF32);
      break;
    default:
      break;  // refused above
  }
  return absl::OkStatus();
}

}  // namespace moe
