#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "coordinator/text_codec.h"

#ifndef MOE_TEXT_CODEC_PLUGIN
#define MOE_TEXT_CODEC_PLUGIN "libmoe_text_codec.so"
#endif

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPluginName = "libmoe_text_codec.so";

// Next to the running program first (an installed coordinator), then where the build put it
// (tests run from other folders of the build tree).
std::vector<std::string> PluginCandidates() {
  std::vector<std::string> paths;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) paths.push_back((exe.parent_path() / kPluginName).string());
  paths.push_back(MOE_TEXT_CODEC_PLUGIN);
  return paths;
}

using LoadFn = TextCodec* (*)(const char*, absl::Status*);

// The plugin is loaded once and never unloaded: codecs' code lives in it.
absl::StatusOr<LoadFn> PluginEntry() {
  static std::once_flag once;
  static absl::StatusOr<LoadFn> entry = absl::InternalError("unset");
  std::call_once(once, [] {
    std::string tried;
    for (const std::string& path : PluginCandidates()) {
      std::error_code ec;
      if (!fs::exists(path, ec)) {
        absl::StrAppend(&tried, " ", path, " (missing)");
        continue;
      }
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle == nullptr) {
        absl::StrAppend(&tried, " ", path, " (", dlerror(), ")");
        continue;
      }
      void* sym = dlsym(handle, "moe_text_codec_load");
      if (sym == nullptr) {
        absl::StrAppend(&tried, " ", path, " (no moe_text_codec_load)");
        continue;
      }
      entry = reinterpret_cast<LoadFn>(sym);
      return;
    }
    entry = absl::FailedPreconditionError(absl::StrCat("cannot load the tokenizer plugin", tried));
  });
  return entry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TextCodec>> LoadTextCodec(const std::string& model_dir) {
  std::error_code ec;
  if (!fs::exists(fs::path(model_dir) / "tokenizer.model", ec)) {
    return absl::NotFoundError(absl::StrCat(model_dir, " has no tokenizer.model"));
  }
  MOE_ASSIGN_OR_RETURN(LoadFn load, PluginEntry());
  absl::Status error;
  TextCodec* codec = load(model_dir.c_str(), &error);
  if (codec == nullptr) return error.ok() ? absl::InternalError("tokenizer plugin failed") : error;
  return std::shared_ptr<const TextCodec>(codec);
}

}  // namespace moe
