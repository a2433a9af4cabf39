// Which of a checkpoint's tokenizer files is read (vLLM's --tokenizer-mode), apart from Tokenizer so
// that options and interfaces can name it.
#pragma once

#include <string_view>

#include "common/status.h"

namespace moe {

enum class TokenizerFile {
  kAuto,           // tokenizer.json where the folder has one (vLLM's and TGI's choice), else tokenizer.model
  kTokenizerJson,  // "hf": tokenizer.json
  kSentencePiece,  // "slow": tokenizer.model, as transformers' slow tokenizer reads it (BOS/EOS and
                   // added tokens per tokenizer_config.json)
  kMistral,        // "mistral": tokenizer.model as mistral-common reads it (its own BOS/EOS, nothing else)
};

// "auto", "hf", "slow" or "mistral"; InvalidArgument naming the choices otherwise (worker/tokenizer.cc).
absl::StatusOr<TokenizerFile> ParseTokenizerMode(std::string_view mode);

}  // namespace moe
