#include "coordinator/text_codec.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "worker/tokenizer.h"

namespace moe {
namespace {

class SentencePieceStream final : public TextStream {
 public:
  SentencePieceStream(const Tokenizer& tok, std::span<const int32_t> prompt, bool skip_special_tokens)
      : detok_(tok, prompt, skip_special_tokens) {}
  std::string Push(int32_t id) override { return detok_.Push(id); }
  std::string Flush() override { return detok_.Flush(); }

 private:
  StreamingDetokenizer detok_;
};

class SentencePieceCodec final : public TextCodec {
 public:
  explicit SentencePieceCodec(std::unique_ptr<Tokenizer> tok) : tok_(std::move(tok)) {
    const std::vector<std::string> texts = tok_->TokenTexts();
    for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
      max_token_bytes_ = std::max({max_token_bytes_, tok_->Piece(id).size(), texts[static_cast<size_t>(id)].size()});
    }
  }
  std::vector<int32_t> Encode(std::string_view text, std::vector<TextSpan>* spans) const override {
    return tok_->Encode(text, spans);
  }
  std::vector<int32_t> EncodeWithSpecialTokens(std::string_view text, std::vector<TextSpan>* spans) const override {
    return tok_->EncodeWithSpecialTokens(text, spans);
  }
  std::string Piece(int32_t id) const override { return tok_->Piece(id); }
  std::vector<std::string> TokenTexts() const override { return tok_->TokenTexts(); }
  std::string TokenBytes(int32_t id) const override { return tok_->TokenBytes(id); }
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    return tok_->Decode(ids, skip_special_tokens);
  }
  size_t DecodedSizeBound(std::span<const int32_t> ids) const override { return tok_->DecodedSizeBound(ids); }
  int32_t bos_id() const override { return tok_->bos_id(); }
  int32_t eos_id() const override { return tok_->eos_id(); }
  int32_t vocab_size() const override { return tok_->vocab_size(); }
  bool add_bos() const override { return tok_->add_bos(); }
  bool add_eos() const override { return tok_->add_eos(); }
  size_t max_token_bytes() const override { return max_token_bytes_; }
  bool collapses_spaces() const override { return tok_->collapses_spaces(); }
  std::unique_ptr<TextStream> NewStream(std::span<const int32_t> prompt_ids, bool skip_special_tokens) const override {
    return std::make_unique<SentencePieceStream>(*tok_, prompt_ids, skip_special_tokens);
  }

 private:
  std::unique_ptr<Tokenizer> tok_;
  size_t max_token_bytes_ = 4;  // at least a whole character's bytes: what an unknown token stands for
};

}  // namespace

absl::StatusOr<std::shared_ptr<const TextCodec>> LoadTextCodec(const std::string& model_dir, TokenizerFile file) {
  std::error_code ec;
  const std::filesystem::path dir(model_dir);
  const bool json = std::filesystem::exists(dir / "tokenizer.json", ec);
  const bool model = std::filesystem::exists(dir / "tokenizer.model", ec);
  const bool sentencepiece = file == TokenizerFile::kSentencePiece || file == TokenizerFile::kMistral;
  if (file == TokenizerFile::kTokenizerJson ? !json : sentencepiece ? !model : !json && !model) {
    return absl::NotFoundError(absl::StrCat(model_dir, " has no ",
                                            file == TokenizerFile::kTokenizerJson ? "tokenizer.json"
                                            : sentencepiece                       ? "tokenizer.model"
                                                                                  : "tokenizer.json or tokenizer.model"));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Load(model_dir, file));
  return std::shared_ptr<const TextCodec>(std::make_shared<SentencePieceCodec>(std::move(tok)));
}

}  // namespace moe
