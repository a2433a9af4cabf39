// Fuzz target: a public gRPC request as the coordinator checks it (coordinator/validation.h) against
// the default model and its tokenizer: the first byte picks Generate, Score or ScoreRolling, the rest
// is the request's protobuf wire bytes (any gRPC client can send any). Bad requests must be
// INVALID_ARGUMENT naming the field, never a crash or memory corruption.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "coordinator/text_codec.h"
#include "coordinator/validation.h"
#include "moe/v1/inference.pb.h"
#include "worker/model/config.h"

namespace {

struct Model {
  moe::ModelConfig config;
  std::shared_ptr<const moe::TextCodec> tokenizer;
};

const Model& DefaultModel() {
  static const Model* model = [] {
    // Protobuf logs each string field of invalid UTF-8 it refuses (gRPC refuses such a request too).
    google::protobuf::SetLogHandler(nullptr);
    const std::string dir = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";
    absl::StatusOr<moe::ModelConfig> config = moe::ModelConfig::FromModelDir(dir);
    absl::StatusOr<std::shared_ptr<const moe::TextCodec>> tokenizer = moe::LoadTextCodec(dir);
    if (!config.ok() || !tokenizer.ok()) std::abort();  // the harness's own data: a broken checkout
    return new Model{*std::move(config), *std::move(tokenizer)};
  }();
  return *model;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 64 * 1024) return 0;
  const Model& m = DefaultModel();
  moe::RequestModel model{.config = m.config, .tokenizer = m.tokenizer.get()};
  model.max_model_len = 256;  // some prompts reach the context
  const void* bytes = data + 1;
  const int n = static_cast<int>(size - 1);
  switch (data[0] % 3) {
    case 0: {
      moe::v1::GenerateRequest r;
      if (r.ParseFromArray(bytes, n)) (void)moe::ValidateGenerate(r, model);
      break;
    }
    case 1: {
      moe::v1::ScoreRequest r;
      if (r.ParseFromArray(bytes, n)) (void)moe::ValidateScore(r, model);
      break;
    }
    default: {
      moe::v1::ScoreRollingRequest r;
      if (r.ParseFromArray(bytes, n)) (void)moe::ValidateScoreRolling(r, model, /*max_windows=*/1024);
      break;
    }
  }
  return 0;
}
