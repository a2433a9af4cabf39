// Hugging Face text-generation-inference's own HTTP API (TGI's router, v2/v3), as pure functions:
// POST /generate, /generate_stream and / (what huggingface_hub's InferenceClient.text_generation
// posts to), GET /info. A request {"inputs", "parameters": {...}} becomes the Generate call it
// amounts to; its answers and errors take TGI's shapes.
//
// TGI's rules, kept: without "parameters" at all it samples (do_sample true), with them it samples
// only when do_sample is true or temperature != 1, top_k, top_p < 1 (or typical_p < 1) is given;
// max_new_tokens defaults to 100, an explicit null to what the context leaves; temperature must be
// > 0, top_p and typical_p in (0, 1), top_k > 0, repetition_penalty > 0, frequency_penalty in
// [-2, 2]; the stop sequence stays in the text; details.seed is the seed sampled with (null when
// greedy); best_of samples several and answers the most probable per token. Refused (422, naming
// the field) where TGI would do what this server does not: watermark, typical_p (no typical
// sampling here), adapter_id.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "moe/v1/inference.pb.h"

namespace moe::openai {

// TGI's error body {"error", "error_type"} with its HTTP status.
struct TgiError {
  int status = 422;
  std::string error;
  std::string error_type = "validation";
  nlohmann::json ToJson() const { return {{"error", error}, {"error_type", error_type}}; }
};

// 422 "Input validation error: <message>", TGI's validation error.
TgiError TgiValidationError(const std::string& message);

// A gRPC error of the coordinator as TGI reports its kind: a refused request 422 (validation), an
// overloaded cluster 429 (overloaded), a missing key 401, anything else 424 (generation).
TgiError TgiErrorFromGrpc(int grpc_code, const std::string& message);
// The same for an error the front already has as an HTTP status (400/404: validation; 405, 413 and
// 499, a client that left, keep their status; the rest, 503 included, a generation failure as TgiErrorFromGrpc's).
TgiError TgiErrorFromHttp(int status, const std::string& message);

enum class TgiRoute {
  kGenerate,        // POST /generate: one answer object
  kGenerateStream,  // POST /generate_stream: server-sent events
  kCompat,          // POST /: "stream" decides; a whole answer is a list of one; return_full_text defaults to true
};

struct TgiCall {
  v1::GenerateRequest request;  // the prompt (inputs) and sampling; the server adds the seed and max_tokens
  std::string inputs;
  bool stream = false;
  bool details = false;                 // the answer carries details (also with decoder_input_details)
  bool decoder_input_details = false;   // details.prefill: the prompt's tokens with their logprobs
  bool return_full_text = false;        // generated_text starts with the inputs
  uint32_t top_n_tokens = 0;            // each token's most probable alternatives (top_tokens)
  bool sampling = false;                // TGI's effective do_sample
  std::optional<uint64_t> seed;         // given; when sampling without one the server draws one
  bool max_new_tokens_to_context = false;  // max_new_tokens: null, so what the context leaves
  bool add_special_tokens = true;  // TGI's: false encodes the inputs without BOS
  // best_of: this many sequences sampled (seeds seed, seed + 1, ...), the one of the highest mean
  // token logprob answered, the others in details.best_of_sequences.
  uint32_t best_of = 1;
};

// The most sequences best_of may ask for (TGI's --max-best-of; its default is 2).
inline constexpr uint32_t kTgiMaxBestOf = 8;

// The most top_n_tokens TGI serves by default (its launcher's --max-top-n-tokens).
inline constexpr uint32_t kTgiMaxTopNTokens = 5;
// The most stop sequences (TGI's --max-stop-sequences default is 4; the coordinator takes 64).
inline constexpr size_t kTgiMaxStopSequences = 64;

std::variant<TgiCall, TgiError> ParseTgiRequest(const std::string& body, TgiRoute route);

// A token as TGI writes it: {"id", "text", "logprob", "special"}.
nlohmann::json TgiTokenJson(int32_t id, const std::string& text, double logprob, bool special);

// "length", "eos_token" (the end-of-sequence token or a stop token id) or "stop_sequence".
std::string TgiFinishReason(v1::FinishReason r);

// TGI's POST /tokenize takes /generate's body and reads two things of it: the inputs (special
// tokens written in them are their ids) and add_special_tokens (default true: BOS and EOS as the
// tokenizer config says; false: neither). Its parameters are not read (TGI's own ignores truncate
// there too).
struct TgiTokenizeCall {
  v1::TokenizeRequest request;  // the inputs, with offsets asked for
};
std::variant<TgiTokenizeCall, TgiError> ParseTgiTokenizeRequest(const std::string& body);

// TGI's tokens of a text: per token {"id", "text", "start", "stop"}, start and stop the bytes of
// `text` it came from (TokenizeResponse.offsets: TGI's, the Rust tokenizers' byte offsets) and
// "text" those bytes (TGI's own cuts that many characters instead, which differs where the text
// is not ASCII); without offsets, as TGI answers such a tokenizer: "" and 0, 0.
nlohmann::json TgiTokenizeAnswer(const std::string& text, const v1::TokenizeResponse& tokens);

}  // namespace moe::openai
