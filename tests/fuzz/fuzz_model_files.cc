// Fuzz target: the files a model folder holds, read as moe-worker and moe-coordinator read them: the
// first byte picks a safetensors file (its header, dtypes, shapes and offsets checked against the
// file's size), config.json, or generation_config.json (alone, and beside the default model's
// config.json as a model folder is read); the rest is the file. A bad file must be
// refused naming what is wrong, never a crash, an out-of-bounds read or memory corruption.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include <unistd.h>

#include "common/json_util.h"
#include "worker/model/config.h"
#include "worker/model/generation_config.h"
#include "worker/model/safetensors.h"

namespace {

// One scratch folder for the process, removed at exit: each input is written to a file there and
// read back. It starts with the default model's config.json, beside which a generation_config.json
// input is read as a model folder's (ModelConfig::FromModelDir checks its end ids against the vocabulary).
std::string* scratch = nullptr;

void RemoveScratch() {
  for (const char* name : {"model.safetensors", "config.json", "generation_config.json"}) {
    unlink((*scratch + "/" + name).c_str());
  }
  rmdir(scratch->c_str());
}

const std::string& Scratch() {
  if (scratch == nullptr) {
    char tmp[] = "/tmp/fuzz_model_files.XXXXXX";
    if (mkdtemp(tmp) == nullptr) std::abort();
    scratch = new std::string(tmp);
    std::atexit(RemoveScratch);
  }
  return *scratch;
}

std::string Write(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = Scratch() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) std::abort();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 64 * 1024) return 0;
  const uint8_t* body = data + 1;
  const size_t n = size - 1;
  switch (data[0] % 3) {
    case 0: {
      absl::StatusOr<std::unique_ptr<moe::SafetensorsFile>> f =
          moe::SafetensorsFile::Open(Write("model.safetensors", body, n));
      if (f.ok()) {  // every byte of every tensor read: a range past the mapping would fault here
        unsigned sum = 0;
        for (const auto& [name, view] : (*f)->tensors()) {
          for (size_t i = 0; i < view.nbytes; ++i) sum += static_cast<unsigned>(view.data[i]);
        }
        volatile unsigned keep = sum;
        (void)keep;
      }
      break;
    }
    case 1:
      (void)moe::ModelConfig::FromFile(Write("config.json", body, n));
      break;
    default: {
      static const std::string config = [] {
        std::ifstream in(std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe/config.json", std::ios::binary);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      }();
      Write("config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size());
      Write("generation_config.json", body, n);
      (void)moe::GenerationConfig::FromModelDir(Scratch());
      (void)moe::ModelConfig::FromModelDir(Scratch());
      std::remove((Scratch() + "/generation_config.json").c_str());
      break;
    }
  }
  return 0;
}
