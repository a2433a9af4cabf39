// Request validation where requests enter the coordinator: every bad field is INVALID_ARGUMENT
// with a message that starts with the field's path; good requests become the token ids the
// model's own tokenizer gives (shakespeare-moe) and the sampling defaults the proto documents.
// Also the rolling windows of ScoreRolling.
#include "coordinator/validation.h"
#include "worker/json_schema.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "coordinator/answer_size.h"
#include "coordinator/score_windows.h"

namespace moe {
namespace {

const std::string kShakespeare = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";
const std::string kTiny = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";  // no tokenizer

class ValidationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shakespeare_config_ = new ModelConfig(ValueOrThrow(ModelConfig::FromModelDir(kShakespeare)));
    tiny_config_ = new ModelConfig(ValueOrThrow(ModelConfig::FromModelDir(kTiny)));
    codec_ = new std::shared_ptr<const TextCodec>(ValueOrThrow(LoadTextCodec(kShakespeare)));
  }
  static void TearDownTestSuite() {
    delete shakespeare_config_;
    delete tiny_config_;
    delete codec_;
  }

  RequestModel shakespeare() const { return {*shakespeare_config_, codec_->get()}; }
  RequestModel tiny() const { return {*tiny_config_, nullptr}; }

  static v1::GenerateRequest Ids(std::vector<int32_t> ids) {
    v1::GenerateRequest r;
    r.mutable_prompt()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
    return r;
  }

  static ModelConfig* shakespeare_config_;
  static ModelConfig* tiny_config_;
  static std::shared_ptr<const TextCodec>* codec_;
};
ModelConfig* ValidationTest::shakespeare_config_ = nullptr;
ModelConfig* ValidationTest::tiny_config_ = nullptr;
std::shared_ptr<const TextCodec>* ValidationTest::codec_ = nullptr;

// The status is INVALID_ARGUMENT and its message starts with "<field>: ".
::testing::AssertionResult NamesField(const absl::Status& s, const std::string& field) {
  if (s.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "expected INVALID_ARGUMENT, got " << s;
  }
  if (std::string(s.message()).rfind(field + ": ", 0) != 0) {
    return ::testing::AssertionFailure() << "message does not start with '" << field << ": ': " << s.message();
  }
  return ::testing::AssertionSuccess();
}

// A codec that says it collapses runs of spaces (tokenizer.model's remove_extra_whitespaces),
// otherwise `inner`.
class CollapsingCodec final : public TextCodec {
 public:
  explicit CollapsingCodec(const TextCodec& inner) : inner_(inner) {}
  std::vector<int32_t> Encode(std::string_view text, std::vector<TextSpan>* spans) const override {
    return inner_.Encode(text, spans);
  }
  std::vector<int32_t> EncodeWithSpecialTokens(std::string_view text, std::vector<TextSpan>* spans) const override {
    return inner_.EncodeWithSpecialTokens(text, spans);
  }
  std::string Piece(int32_t id) const override { return inner_.Piece(id); }
  std::vector<std::string> TokenTexts() const override { return inner_.TokenTexts(); }
  std::string TokenBytes(int32_t id) const override { return inner_.TokenBytes(id); }
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    return inner_.Decode(ids, skip_special_tokens);
  }
  size_t DecodedSizeBound(std::span<const int32_t> ids) const override { return inner_.DecodedSizeBound(ids); }
  int32_t bos_id() const override { return inner_.bos_id(); }
  int32_t eos_id() const override { return inner_.eos_id(); }
  int32_t vocab_size() const override { return inner_.vocab_size(); }
  bool add_bos() const override { return inner_.add_bos(); }
  bool add_eos() const override { return inner_.add_eos(); }
  size_t max_token_bytes() const override { return inner_.max_token_bytes(); }
  bool collapses_spaces() const override { return true; }
  std::unique_ptr<TextStream> NewStream(std::span<const int32_t> prompt_ids, bool skip_special_tokens) const override {
    return inner_.NewStream(prompt_ids, skip_special_tokens);
  }

 private:
  const TextCodec& inner_;
};

// A text prompt that cannot fit the context whatever it encodes to is refused before it is encoded
// (a 40 MB one had taken 18 s and 2.3 GB); truncated (truncate_prompt_tokens), it is served.
TEST_F(ValidationTest, TextTooLongForAnyEncodingIsRefusedBeforeItIsEncoded) {
  const RequestModel m = shakespeare();
  const size_t per_token = m.tokenizer->max_token_bytes();
  // The bound holds: no text encodes to fewer tokens than its bytes / max_token_bytes.
  for (const std::string& text : {std::string(5000, 'e'), std::string("the king and the queen, ") + std::string(300, ' '),
                                 std::string("ROMEO: ") + "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\xa6\x9c <s></s>"}) {
    EXPECT_GE(m.tokenizer->Encode(text).size() * per_token, text.size()) << text;
    EXPECT_GE(m.tokenizer->EncodeWithSpecialTokens(text).size() * per_token, text.size()) << text;
  }
  v1::GenerateRequest r;
  // Spaces count as bytes here (this tokenizer keeps them: each is a token's worth) ...
  const std::string spaces(static_cast<size_t>(m.context()) * per_token, ' ');
  r.mutable_prompt()->set_text(spaces + "king" + spaces);
  r.mutable_sampling()->set_max_tokens(1);
  EXPECT_TRUE(absl::StrContains(ValidateGenerate(r, m).status().message(), "at least")) << ValidateGenerate(r, m).status();
  // ... and a run of them as one byte where encoding collapses runs (remove_extra_whitespaces).
  ASSERT_FALSE(m.tokenizer->collapses_spaces());
  const CollapsingCodec collapsing(*m.tokenizer);
  const RequestModel c{*shakespeare_config_, &collapsing};
  EXPECT_FALSE(absl::StrContains(ValidateGenerate(r, c).status().message(), "at least")) << ValidateGenerate(r, c).status();
  r.clear_sampling();
  r.mutable_prompt()->set_text(std::string(static_cast<size_t>(m.context()) * per_token, 'a'));
  const absl::StatusOr<GenerateJob> refused = ValidateGenerate(r, m);
  ASSERT_TRUE(NamesField(refused.status(), "prompt"));
  EXPECT_NE(std::string(refused.status().message()).find(absl::StrCat("at least ", m.context(), " tokens")), std::string::npos)
      << refused.status();
  r.mutable_sampling()->set_truncate_prompt_tokens(8);
  const absl::StatusOr<GenerateJob> truncated = ValidateGenerate(r, m);
  ASSERT_TRUE(truncated.ok()) << truncated.status();
  EXPECT_EQ(truncated->assign.prompt_size(), 8);
}

// A score item's texts too long for the context whatever they encode to are refused before they
// are encoded, as a Generate prompt (a 256 MB context took ~30 s and 2.6 GB to be refused after);
// one that might fit is encoded and checked as before.
TEST_F(ValidationTest, ScoreTextsTooLongForAnyEncodingAreRefusedBeforeTheyAreEncoded) {
  const RequestModel m = shakespeare();
  const size_t per_token = m.tokenizer->max_token_bytes();
  const size_t bytes = static_cast<size_t>(m.context()) * per_token;
  auto item = [](const std::string& context, const std::string& continuation, std::vector<int32_t> ids = {}) {
    v1::ScoreRequest r;
    v1::ScoreItem* it = r.add_items();
    it->mutable_context()->set_text(context);
    if (ids.empty()) {
      it->mutable_continuation()->set_text(continuation);
    } else {
      it->mutable_continuation()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
    }
    return r;
  };
  for (const v1::ScoreRequest& r : {item(std::string(bytes, 'a'), " b"), item("a", std::string(bytes + 2 * per_token, 'b')),
                                    item(std::string(bytes, 'a'), "", {5, 6})}) {
    const absl::Status refused = ValidateScore(r, m).status();
    EXPECT_TRUE(NamesField(refused, "items[0] (context + continuation)")) << refused;
    EXPECT_TRUE(absl::StrContains(refused.message(), "at least")) << refused;
  }
  // Within the bound: encoded, then refused (or not) on its tokens.
  const absl::Status counted = ValidateScore(item(std::string(bytes / 2, 'a'), std::string(bytes / 2, 'b')), m).status();
  EXPECT_FALSE(absl::StrContains(counted.message(), "at least")) << counted;
  EXPECT_TRUE(ValidateScore(item("ROMEO: the king", " is dead"), m).ok());
}

TEST_F(ValidationTest, TextPromptUsesTheModelTokenizerAndProtoDefaults) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("ROMEO:");
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  // samples.json of the model: "ROMEO:" -> [870, 2007] (tokenizer_config: no BOS).
  EXPECT_EQ(std::vector<int32_t>(job->assign.prompt().begin(), job->assign.prompt().end()),
            std::vector<int32_t>({870, 2007}));
  EXPECT_EQ(job->assign.kind(), v1::Assign::KIND_GENERATE);
  EXPECT_EQ(job->assign.max_tokens(), 16u);
  EXPECT_EQ(job->assign.temperature(), 1.0f);
  EXPECT_EQ(job->assign.top_p(), 1.0f);
  EXPECT_EQ(job->assign.top_k(), 0);
  // No seed: a fresh one a request, as vLLM samples (the seed 0 every request had made every
  // unseeded sampled request give the same text). Two equal draws of 64 bits would be a defect too.
  absl::StatusOr<GenerateJob> again = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(job->assign.seed(), again->assign.seed());
  EXPECT_EQ(job->assign.top_logprobs(), 0u);
  EXPECT_FALSE(job->want_logprobs);
  EXPECT_EQ(job->reserve_positions(), 2 + 16);
  EXPECT_FALSE(job->assign.has_repetition_penalty()) << "absent: off";
  EXPECT_EQ(job->assign.presence_penalty(), 0.0f);
  EXPECT_EQ(job->assign.frequency_penalty(), 0.0f);
  EXPECT_EQ(job->assign.min_tokens(), 0u);
  EXPECT_EQ(job->assign.min_p(), 0.0f);
  EXPECT_EQ(job->n, 1u);
}

// Prompt.parse_special_tokens (what the HTTP fronts set, as Hugging Face tokenizers read a prompt),
// with the default model's tokenizer configured to add BOS and EOS: "<s>", "</s>" and "<unk>"
// written in a text prompt are their ids (transformers' ids: tests/data/tokenizers/
// offsets_golden.json), BOS and EOS around them; a continuation gets neither; off, the same text is
// plain text. And a score item of two texts splits where the context's own ids end, EOS or not.
TEST_F(ValidationTest, TextPromptsParseSpecialTokensWhenAsked) {
  const std::string dir = ::testing::TempDir() + "/moe_bos_eos_tokenizer";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kShakespeare + "/tokenizer.model", dir + "/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"add_bos_token": true, "add_eos_token": true})";
  const std::shared_ptr<const TextCodec> tok = ValueOrThrow(LoadTextCodec(dir));
  const RequestModel model{*shakespeare_config_, tok.get()};
  const std::vector<int32_t> golden = {261, 1, 271, 2, 281, 0, 280};  // "a<s>b</s>c<unk>d", transformers'

  v1::Prompt p;
  p.set_text("a<s>b</s>c<unk>d");
  p.set_parse_special_tokens(true);
  std::vector<int32_t> want = golden;
  want.insert(want.begin(), 1);
  want.push_back(2);
  EXPECT_EQ(ValueOrThrow(ResolvePrompt(p, model, "prompt", BosPolicy::kTokenizerConfig)), want);
  EXPECT_EQ(ValueOrThrow(ResolvePrompt(p, model, "c", BosPolicy::kNone)), golden);
  p.set_parse_special_tokens(false);
  const std::vector<int32_t> plain = ValueOrThrow(ResolvePrompt(p, model, "c", BosPolicy::kNone));
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0) << "plain text: no BOS inside";
  EXPECT_GT(plain.size(), golden.size());

  // "ROMEO:" is [870, 2007] and "ROMEO: speak" [870, 2007, 618] (samples.json, offsets_golden.json).
  v1::ScoreRequest r;
  v1::ScoreItem* item = r.add_items();
  item->mutable_context()->set_text("ROMEO:");
  item->mutable_continuation()->set_text(" speak");
  const std::vector<ScoreJob> jobs = ValueOrThrow(ValidateScore(r, model));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].tokens, std::vector<int32_t>({1, 870, 2007, 618}));
  EXPECT_EQ(jobs[0].context_tokens, 3);
}

TEST_F(ValidationTest, SamplingFieldsAreCarriedIntoTheAssignment) {
  v1::GenerateRequest r = Ids({5, 6, 7});
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_max_tokens(40);
  s->set_temperature(0.0f);
  s->set_top_k(5);
  s->set_top_p(0.5f);
  s->set_seed(99);
  s->add_stop("\n\n");
  s->add_stop_token_ids(2);
  s->set_logprobs(0);  // set to 0: the sampled token's logprob only
  s->set_ignore_eos(true);
  s->set_min_p(0.1f);
  s->set_repetition_penalty(1.2f);
  s->set_presence_penalty(-0.5f);
  s->set_frequency_penalty(2.0f);
  s->set_min_tokens(40);
  (*s->mutable_logit_bias())[7] = -3.5f;
  s->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->assign.min_p(), 0.1f);
  EXPECT_EQ(job->assign.repetition_penalty(), 1.2f);
  EXPECT_EQ(job->assign.presence_penalty(), -0.5f);
  EXPECT_EQ(job->assign.frequency_penalty(), 2.0f);
  EXPECT_EQ(job->assign.min_tokens(), 40u);
  EXPECT_EQ(job->n, 1u);
  ASSERT_EQ(job->assign.logit_bias_size(), 1);
  EXPECT_EQ(job->assign.logit_bias().at(7), -3.5f);
  EXPECT_TRUE(job->assign.json_object());
  EXPECT_FALSE(ValidateGenerate(Ids({5, 6, 7}), shakespeare())->assign.json_object());
  EXPECT_EQ(job->assign.max_tokens(), 40u);
  EXPECT_EQ(job->assign.temperature(), 0.0f);
  EXPECT_EQ(job->assign.top_k(), 5);
  EXPECT_EQ(job->assign.top_p(), 0.5f);
  EXPECT_EQ(job->assign.seed(), 99u);
  EXPECT_TRUE(job->assign.ignore_eos());
  ASSERT_EQ(job->assign.stop_token_ids_size(), 1);
  EXPECT_EQ(job->assign.stop_token_ids(0), 2);
  EXPECT_TRUE(job->want_logprobs);
  EXPECT_EQ(job->stop, std::vector<std::string>({"\n\n"}));
  EXPECT_FALSE(job->include_stop);
  EXPECT_EQ(job->assign.allowed_token_ids_size(), 0);
}

// vLLM's extras: include_stop_str_in_output reaches the output's job, allowed_token_ids the
// worker (sorted, each once), and truncate_prompt_tokens keeps the prompt's last tokens before the
// context check.
TEST_F(ValidationTest, VllmExtrasAreCarried) {
  v1::GenerateRequest r = Ids({5, 6, 7, 8, 9});
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_include_stop_str_in_output(true);
  for (int32_t id : {40, 7, 40, 3}) s->add_allowed_token_ids(id);
  s->set_truncate_prompt_tokens(2);
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_TRUE(job->include_stop);
  EXPECT_EQ(std::vector<int32_t>(job->assign.allowed_token_ids().begin(), job->assign.allowed_token_ids().end()),
            (std::vector<int32_t>{3, 7, 40}));
  EXPECT_EQ(std::vector<int32_t>(job->assign.prompt().begin(), job->assign.prompt().end()), (std::vector<int32_t>{8, 9}));
  s->set_truncate_prompt_tokens(9);  // longer than the prompt: all of it
  EXPECT_EQ(ValidateGenerate(r, shakespeare())->assign.prompt_size(), 5);
  // A prompt longer than the context fits once truncated.
  const int64_t context = shakespeare().config.max_position_embeddings;
  v1::GenerateRequest long_prompt = Ids(std::vector<int32_t>(static_cast<size_t>(context) + 10, 5));
  EXPECT_TRUE(NamesField(ValidateGenerate(long_prompt, shakespeare()).status(), "prompt"));
  long_prompt.mutable_sampling()->set_truncate_prompt_tokens(100);
  job = ValidateGenerate(long_prompt, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->assign.prompt_size(), 100);
  EXPECT_EQ(job->assign.max_tokens(), kDefaultMaxTokens);
}

// cache_salt: its prefix-hash root to the worker (0 without one; equal salts, equal roots), at most
// 256 bytes.
// The model's recommended defaults (generation_config.json) fill what a request leaves unset and
// nothing it sets; max_tokens' default becomes the model's max_new_tokens.
TEST_F(ValidationTest, ModelSamplingDefaultsFillUnsetFields) {
  RequestModel model = shakespeare();
  model.default_sampling.set_temperature(0.6f);
  model.default_sampling.set_top_p(0.9f);
  model.default_sampling.set_top_k(40);
  model.default_sampling.set_min_p(0.05f);
  model.default_sampling.set_repetition_penalty(1.1f);
  model.default_sampling.set_max_tokens(7);
  v1::GenerateRequest r = Ids({5, 6, 7});
  r.mutable_sampling()->set_top_p(0.5f);
  r.mutable_sampling()->add_stop_token_ids(9);
  const GenerateJob job = ValueOrThrow(ValidateGenerate(r, model));
  EXPECT_FLOAT_EQ(job.assign.temperature(), 0.6f);
  EXPECT_FLOAT_EQ(job.assign.top_p(), 0.5f) << "the request's own";
  EXPECT_EQ(job.assign.top_k(), 40);
  EXPECT_FLOAT_EQ(job.assign.min_p(), 0.05f);
  EXPECT_FLOAT_EQ(job.assign.repetition_penalty(), 1.1f);
  EXPECT_EQ(job.assign.max_tokens(), 7u);
  EXPECT_EQ(job.assign.stop_token_ids_size(), 1);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_max_tokens(3);
  const GenerateJob greedy = ValueOrThrow(ValidateGenerate(r, model));
  EXPECT_EQ(greedy.assign.temperature(), 0.0f) << "an explicit 0 is set, not unset";
  EXPECT_EQ(greedy.assign.max_tokens(), 3u);
  // The model's max_tokens within what the context leaves; never an error for a field not set.
  model.default_sampling.set_max_tokens(static_cast<uint32_t>(model.context()));
  v1::GenerateRequest unset = Ids({5, 6, 7});
  EXPECT_EQ(ValueOrThrow(ValidateGenerate(unset, model)).assign.max_tokens(), model.context() - 3);
  unset.mutable_sampling()->set_truncate_prompt_tokens(1);
  EXPECT_EQ(ValueOrThrow(ValidateGenerate(unset, model)).assign.max_tokens(), model.context() - 1) << "after truncation";
  // A cap (--generation-config DIR's or the override's max_new_tokens) holds for what a request asks.
  model.max_tokens_cap = 4;
  v1::GenerateRequest asked = Ids({5, 6, 7});
  asked.mutable_sampling()->set_max_tokens(100);
  EXPECT_EQ(ValueOrThrow(ValidateGenerate(asked, model)).assign.max_tokens(), 4u);
  EXPECT_EQ(ValueOrThrow(ValidateGenerate(Ids({5, 6, 7}), model)).assign.max_tokens(), 4u);
  asked.mutable_sampling()->set_max_tokens(4000000000u);  // the request's own value is checked first
  EXPECT_TRUE(NamesField(ValidateGenerate(asked, model).status(), "sampling.max_tokens"));
  asked.mutable_sampling()->set_max_tokens(100);
  asked.mutable_sampling()->set_min_tokens(50);
  const absl::Status min_over = ValidateGenerate(asked, model).status();
  EXPECT_TRUE(NamesField(min_over, "sampling.min_tokens"));
  EXPECT_NE(std::string(min_over.message()).find("caps max_tokens"), std::string::npos) << min_over;
  // Without defaults: the API's own (temperature 1, max_tokens 16).
  const GenerateJob plain = ValueOrThrow(ValidateGenerate(Ids({5, 6, 7}), shakespeare()));
  EXPECT_FLOAT_EQ(plain.assign.temperature(), 1.0f);
  EXPECT_EQ(plain.assign.max_tokens(), 16u);
}

// --generation-config DIR's end ids beyond the model's join every request's stop_token_ids (once),
// as vLLM adds them, except where the request ignores end-of-sequence tokens.
TEST_F(ValidationTest, GenerationConfigDirEndIdsJoinTheStopTokenIds) {
  RequestModel model = shakespeare();
  model.extra_stop_token_ids = {7, 11};
  v1::GenerateRequest r = Ids({5, 6});
  r.mutable_sampling()->add_stop_token_ids(11);
  r.mutable_sampling()->add_stop_token_ids(3);
  const GenerateJob job = ValueOrThrow(ValidateGenerate(r, model));
  EXPECT_EQ(std::vector<int32_t>(job.assign.stop_token_ids().begin(), job.assign.stop_token_ids().end()),
            (std::vector<int32_t>{11, 3, 7}));
  r.mutable_sampling()->set_ignore_eos(true);
  const GenerateJob ignoring = ValueOrThrow(ValidateGenerate(r, model));
  EXPECT_EQ(std::vector<int32_t>(ignoring.assign.stop_token_ids().begin(), ignoring.assign.stop_token_ids().end()),
            (std::vector<int32_t>{11, 3}))
      << "the request's own stop ids stay";
  EXPECT_EQ(ValueOrThrow(ValidateGenerate(Ids({5, 6}), shakespeare())).assign.stop_token_ids_size(), 0);
  // Each id once, first come first: a million copies are one id, not 4 MB sent with every completion.
  v1::GenerateRequest many = Ids({5, 6});
  for (int i = 0; i < 1000000; ++i) many.mutable_sampling()->add_stop_token_ids(i % 2 == 0 ? 11 : 4);
  const GenerateJob once = ValueOrThrow(ValidateGenerate(many, model));
  EXPECT_EQ(std::vector<int32_t>(once.assign.stop_token_ids().begin(), once.assign.stop_token_ids().end()),
            (std::vector<int32_t>{11, 4, 7}));
}

TEST_F(ValidationTest, CacheSaltBecomesThePromptsPrefixRoot) {
  v1::GenerateRequest r = Ids({5, 6});
  EXPECT_EQ(ValidateGenerate(r, shakespeare())->assign.prefix_root(), 0u);
  r.set_cache_salt("tenant-a");
  const uint64_t a = ValidateGenerate(r, shakespeare())->assign.prefix_root();
  EXPECT_NE(a, 0u);
  EXPECT_EQ(ValidateGenerate(r, shakespeare())->CompletionAssign(1).prefix_root(), a) << "every completion of n";
  r.set_cache_salt("tenant-b");
  EXPECT_NE(ValidateGenerate(r, shakespeare())->assign.prefix_root(), a);
  r.set_cache_salt(std::string(257, 's'));
  EXPECT_TRUE(NamesField(ValidateGenerate(r, shakespeare()).status(), "cache_salt"));
}

// priority: 0 under first come, first served; any value under --scheduling-policy priority, carried
// to the worker.
TEST_F(ValidationTest, PriorityNeedsThePriorityPolicy) {
  v1::GenerateRequest r = Ids({5, 6});
  r.set_priority(-3);
  EXPECT_TRUE(NamesField(ValidateGenerate(r, shakespeare()).status(), "priority"));
  RequestModel by_priority = shakespeare();
  by_priority.priority_scheduling = true;
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, by_priority);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->assign.priority(), -3);
  EXPECT_EQ(job->CompletionAssign(0).priority(), -3);
}

// bad_words: each left-trimmed word becomes its encodings as written and after a space (the
// tokenizer's own, without BOS), in order.
TEST_F(ValidationTest, BadWordsAreEncodedAsWrittenAndAfterASpace) {
  v1::GenerateRequest r = Ids({5, 6});
  r.mutable_sampling()->add_bad_words("  thee");
  r.mutable_sampling()->add_bad_words("good lord");
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  const TextCodec& codec = *shakespeare().tokenizer;
  std::vector<std::vector<int32_t>> want;
  for (const char* text : {"thee", " thee", "good lord", " good lord"}) {
    std::vector<int32_t> ids = codec.Encode(text);
    if (codec.add_bos()) ids.erase(ids.begin());
    want.push_back(ids);
  }
  ASSERT_EQ(job->assign.bad_words_size(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(std::vector<int32_t>(job->assign.bad_words(i).ids().begin(), job->assign.bad_words(i).ids().end()), want[i]) << i;
  }
  v1::GenerateRequest empty = Ids({5, 6});
  empty.mutable_sampling()->add_bad_words(" ");
  EXPECT_TRUE(NamesField(ValidateGenerate(empty, shakespeare()).status(), "sampling.bad_words[0]"));
}

TEST_F(ValidationTest, EveryBadPromptFieldIsNamed) {
  v1::GenerateRequest none;
  EXPECT_TRUE(NamesField(ValidateGenerate(none, shakespeare()).status(), "prompt"));
  v1::GenerateRequest empty_text;
  empty_text.mutable_prompt()->set_text("");
  EXPECT_TRUE(NamesField(ValidateGenerate(empty_text, shakespeare()).status(), "prompt.text"));
  EXPECT_TRUE(NamesField(ValidateGenerate(Ids({}), shakespeare()).status(), "prompt.token_ids"));
  const absl::Status outside = ValidateGenerate(Ids({5, 2048}), shakespeare()).status();
  EXPECT_TRUE(NamesField(outside, "prompt.token_ids.ids[1]"));
  EXPECT_NE(outside.message().find("2048"), std::string::npos) << outside;
  EXPECT_TRUE(NamesField(ValidateGenerate(Ids({-1}), shakespeare()).status(), "prompt.token_ids.ids[0]"));
  v1::GenerateRequest long_id = Ids({1});
  long_id.set_request_id(std::string(300, 'x'));
  EXPECT_TRUE(NamesField(ValidateGenerate(long_id, shakespeare()).status(), "request_id"));
}

TEST_F(ValidationTest, TextNeedsATokenizer) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("hello");
  const absl::Status s = ValidateGenerate(r, tiny()).status();
  EXPECT_TRUE(NamesField(s, "prompt.text"));
  EXPECT_NE(s.message().find("model has no tokenizer: send token_ids"), std::string::npos) << s;
  // Token ids still work on the tokenizer-less model.
  EXPECT_TRUE(ValidateGenerate(Ids({3, 4}), tiny()).ok());
  v1::GenerateRequest stop = Ids({3, 4});
  stop.mutable_sampling()->add_stop("x");
  EXPECT_TRUE(NamesField(ValidateGenerate(stop, tiny()).status(), "sampling.stop"));
  // A JSON object's mask needs the bytes of each token.
  v1::GenerateRequest json_object = Ids({3, 4});
  json_object.mutable_sampling()->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
  EXPECT_TRUE(NamesField(ValidateGenerate(json_object, tiny()).status(), "sampling.response_format"));
  json_object.mutable_sampling()->mutable_response_format()->set_type(static_cast<v1::ResponseFormat::Type>(7));
  EXPECT_TRUE(NamesField(ValidateGenerate(json_object, shakespeare()).status(), "sampling.response_format.type"));
  // A schema is compiled here: what it cannot enforce is refused with its path; a good one reaches
  // the assignment as compact text with its properties' order kept.
  v1::GenerateRequest schema = Ids({3, 4});
  v1::ResponseFormat* f = schema.mutable_sampling()->mutable_response_format();
  f->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
  f->set_json_schema(R"({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}})");
  const absl::Status bad = ValidateGenerate(schema, shakespeare()).status();
  EXPECT_TRUE(NamesField(bad, "sampling.response_format.json_schema")) << bad;
  EXPECT_NE(bad.message().find("properties.n.multipleOf: not supported"), std::string::npos) << bad;
  f->set_json_schema("{not json");
  EXPECT_TRUE(NamesField(ValidateGenerate(schema, shakespeare()).status(), "sampling.response_format.json_schema"));
  // A schema's text is a string of the request, which no nesting check of a body sees: one nested
  // 100,000 levels deep (compiling it quotes the value) overflowed the coordinator's stack.
  f->set_json_schema("{\"const\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  const absl::Status deep = ValidateGenerate(schema, shakespeare()).status();
  EXPECT_TRUE(NamesField(deep, "sampling.response_format.json_schema")) << deep;
  EXPECT_NE(std::string(deep.message()).find("more than 512 levels deep"), std::string::npos) << deep;
  EXPECT_FALSE(JsonSchema::CompileText("{\"const\": " + std::string(100000, '[') + std::string(100000, ']') + "}").ok());
  // Patterns each within their own limits but too costly together are refused here, naming where
  // the schema's compile budget ran out, before any rank compiles them on its serving loop.
  nlohmann::ordered_json costly = {{"type", "object"}, {"properties", nlohmann::ordered_json::object()}};
  for (int j = 0; j < 64; ++j) {
    const std::string a(1, static_cast<char>('a' + j % 8)), b(1, static_cast<char>('i' + j / 8));
    costly["properties"]["p" + std::to_string(j)] = {{"type", "string"}, {"pattern", "(" + a + "|" + b + ")*" + a + "(" + a + "|" + b + "){10}"}};
  }
  f->set_json_schema(costly.dump());
  const absl::Status budget = ValidateGenerate(schema, shakespeare()).status();
  EXPECT_TRUE(NamesField(budget, "sampling.response_format.json_schema")) << budget;
  EXPECT_NE(budget.message().find(".pattern: the schema's patterns, formats and bounds together take too long"),
            std::string::npos)
      << budget;
  // A schema no output can finish is refused here too, not by a worker error mid-generation: one
  // whose every instance needs another level forever, or more levels than the recogniser's 32.
  f->set_json_schema(R"({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}},
                                         "required": ["a"]}}, "$ref": "#/$defs/n"})");
  const absl::Status endless = ValidateGenerate(schema, shakespeare()).status();
  EXPECT_TRUE(NamesField(endless, "sampling.response_format.json_schema")) << endless;
  EXPECT_NE(endless.message().find("$ref: admits no finite value: every instance needs $defs/n again"), std::string::npos)
      << endless;
  std::string nested = R"({"type": "object"})";
  for (int i = 1; i < 40; ++i) nested = R"({"type": "object", "properties": {"a": )" + nested + R"(}, "required": ["a"]})";
  f->set_json_schema(nested);
  const absl::Status too_deep = ValidateGenerate(schema, shakespeare()).status();
  EXPECT_TRUE(NamesField(too_deep, "sampling.response_format.json_schema")) << too_deep;
  EXPECT_NE(too_deep.message().find("schema: every instance nests deeper than the 32 levels the recogniser follows"),
            std::string::npos)
      << too_deep;
  f->set_json_schema(R"({"type": "object", "properties": {"z": {"type": "integer"}, "a": {"enum": [1, "b"]}}})");
  absl::StatusOr<GenerateJob> ok = ValidateGenerate(schema, shakespeare());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->assign.json_schema(), R"({"type":"object","properties":{"z":{"type":"integer"},"a":{"enum":[1,"b"]}}})");
  EXPECT_FALSE(ok->assign.json_object());
  EXPECT_TRUE(NamesField(ValidateGenerate(schema, tiny()).status(), "sampling.response_format"));
  // guided_choice: the choices reach the assignment; none, or an empty one, is refused by index.
  v1::GenerateRequest choice = Ids({3, 4});
  v1::ResponseFormat* c = choice.mutable_sampling()->mutable_response_format();
  c->set_type(v1::ResponseFormat::TYPE_CHOICE);
  EXPECT_TRUE(NamesField(ValidateGenerate(choice, shakespeare()).status(), "sampling.response_format.choices"));
  c->add_choices("yes");
  c->add_choices("");
  EXPECT_TRUE(NamesField(ValidateGenerate(choice, shakespeare()).status(), "sampling.response_format.choices[1]"));
  c->set_choices(1, "no");
  absl::StatusOr<GenerateJob> chosen = ValidateGenerate(choice, shakespeare());
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_EQ(std::vector<std::string>(chosen->assign.choices().begin(), chosen->assign.choices().end()),
            (std::vector<std::string>{"yes", "no"}));
  // guided_regex: compiled before admission, its error and offset in the message; a regex without
  // TYPE_REGEX is refused rather than ignored.
  v1::GenerateRequest regex = Ids({3, 4});
  v1::ResponseFormat* rf = regex.mutable_sampling()->mutable_response_format();
  rf->set_type(v1::ResponseFormat::TYPE_REGEX);
  EXPECT_TRUE(NamesField(ValidateGenerate(regex, shakespeare()).status(), "sampling.response_format.regex"));
  rf->set_regex("(?=x)a");
  const absl::Status lookahead = ValidateGenerate(regex, shakespeare()).status();
  EXPECT_TRUE(NamesField(lookahead, "sampling.response_format.regex"));
  EXPECT_NE(lookahead.message().find("lookaround"), std::string::npos) << lookahead;
  rf->set_regex("[0-9]{3}-[a-z]+");
  absl::StatusOr<GenerateJob> matched = ValidateGenerate(regex, shakespeare());
  ASSERT_TRUE(matched.ok()) << matched.status();
  EXPECT_EQ(matched->assign.regex(), "[0-9]{3}-[a-z]+");
  EXPECT_TRUE(NamesField(ValidateGenerate(regex, tiny()).status(), "sampling.response_format"));  // no tokenizer
  rf->set_compact(true);
  EXPECT_FALSE(ValidateGenerate(regex, shakespeare())->assign.compact_json()) << "a regex has no whitespace of JSON's";
  v1::GenerateRequest compact = Ids({3, 4});
  compact.mutable_sampling()->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
  compact.mutable_sampling()->mutable_response_format()->set_compact(true);
  EXPECT_TRUE(ValidateGenerate(compact, shakespeare())->assign.compact_json());
  rf->set_compact(false);
  rf->set_type(v1::ResponseFormat::TYPE_TEXT);
  EXPECT_TRUE(NamesField(ValidateGenerate(regex, shakespeare()).status(), "sampling.response_format.regex"));

  // guided_grammar: parsed before admission, its line and column in the message; a grammar without
  // TYPE_GRAMMAR is refused rather than ignored.
  v1::GenerateRequest grammar = Ids({3, 4});
  v1::ResponseFormat* gf = grammar.mutable_sampling()->mutable_response_format();
  gf->set_type(v1::ResponseFormat::TYPE_GRAMMAR);
  EXPECT_TRUE(NamesField(ValidateGenerate(grammar, shakespeare()).status(), "sampling.response_format.grammar"));
  gf->set_grammar("root ::= word\nwords ::= [a-z]+");
  const absl::Status undefined = ValidateGenerate(grammar, shakespeare()).status();
  EXPECT_TRUE(NamesField(undefined, "sampling.response_format.grammar"));
  EXPECT_NE(undefined.message().find("rule 'word' is used but never defined"), std::string::npos) << undefined;
  gf->set_grammar("root ::= [a-z]+ (\" \" [a-z]+)*");
  absl::StatusOr<GenerateJob> parsed = ValidateGenerate(grammar, shakespeare());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->assign.grammar(), "root ::= [a-z]+ (\" \" [a-z]+)*");
  EXPECT_TRUE(parsed->assign.regex().empty());
  EXPECT_TRUE(NamesField(ValidateGenerate(grammar, tiny()).status(), "sampling.response_format"));  // no tokenizer
  gf->set_type(v1::ResponseFormat::TYPE_REGEX);
  gf->set_regex("a");
  EXPECT_TRUE(NamesField(ValidateGenerate(grammar, shakespeare()).status(), "sampling.response_format.grammar"));
}

// Requests with every sampling field set at random (extreme numbers, NaN, any ids, garbage and
// valid schemas, regexes and choices, texts with invalid UTF-8): accepted, or INVALID_ARGUMENT naming
// a field; never a crash (this test also runs under AddressSanitizer and UBSan).
TEST_F(ValidationTest, RandomRequestsAreAcceptedOrNameAField) {
  std::mt19937 rng(17);
  const float floats[] = {0.0f, -1.0f, 0.5f, 1.0f, 2.0f, 1e30f, -1e30f, std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity()};
  const std::string texts[] = {"", "ROMEO:", "\xff\xfe", std::string(5000, 'a'), "{\"type\": \"integer\"}",
                               "{\"type\": \"object\", \"properties\": {\"a\": {\"pattern\": \"^x+$\"}}}", "[a-z]{2,",
                               "(?=x)", "\\d+", "{\"$ref\": \"#/$defs/x\"}", "{\"anyOf\": [{}, {}]}", "null"};
  int ok = 0, refused = 0;
  for (int n = 0; n < 3000; ++n) {
    v1::GenerateRequest r;
    if (rng() % 2 == 0) {
      r.mutable_prompt()->set_text(texts[rng() % std::size(texts)]);
    } else {
      for (int k = static_cast<int>(rng() % 6); k > 0; --k) {
        r.mutable_prompt()->mutable_token_ids()->add_ids(static_cast<int32_t>(rng() % 70000) - 1000);
      }
    }
    v1::SamplingParams& s = *r.mutable_sampling();
    auto f = [&] { return floats[rng() % std::size(floats)]; };
    if (rng() % 2) s.set_max_tokens(static_cast<uint32_t>(rng() % 10000));
    if (rng() % 2) s.set_temperature(f());
    if (rng() % 2) s.set_top_p(f());
    if (rng() % 2) s.set_top_k(static_cast<int32_t>(rng() % 100) - 10);
    if (rng() % 2) s.set_min_p(f());
    if (rng() % 3 == 0) s.set_repetition_penalty(f());
    if (rng() % 3 == 0) s.set_presence_penalty(f());
    if (rng() % 3 == 0) s.set_frequency_penalty(f());
    if (rng() % 3 == 0) s.set_min_tokens(static_cast<uint32_t>(rng() % 100));
    if (rng() % 3 == 0) s.set_n(static_cast<uint32_t>(rng() % 200));
    if (rng() % 3 == 0) s.set_logprobs(static_cast<uint32_t>(rng() % 30));
    if (rng() % 3 == 0) s.add_stop(texts[rng() % std::size(texts)]);
    if (rng() % 3 == 0) s.add_stop_token_ids(static_cast<int32_t>(rng() % 70000) - 1000);
    if (rng() % 4 == 0) s.add_allowed_token_ids(static_cast<int32_t>(rng() % 2100) - 20);
    if (rng() % 5 == 0) s.set_truncate_prompt_tokens(static_cast<uint32_t>(rng() % 40));
    if (rng() % 4 == 0) s.set_include_stop_str_in_output(true);
    if (rng() % 4 == 0) s.add_bad_words(texts[rng() % std::size(texts)]);
    if (rng() % 3 == 0) (*s.mutable_logit_bias())[static_cast<int32_t>(rng() % 70000) - 1000] = f();
    if (rng() % 2) {
      v1::ResponseFormat& fmt = *s.mutable_response_format();
      fmt.set_type(static_cast<v1::ResponseFormat::Type>(rng() % 6));
      if (rng() % 2) fmt.set_json_schema(texts[rng() % std::size(texts)]);
      if (rng() % 2) fmt.set_regex(texts[rng() % std::size(texts)]);
      if (rng() % 2) fmt.add_choices(texts[rng() % std::size(texts)]);
      fmt.set_compact(rng() % 2);
    }
    const RequestModel model = rng() % 4 == 0 ? tiny() : shakespeare();
    absl::StatusOr<GenerateJob> job = ValidateGenerate(r, model);
    if (job.ok()) {
      ++ok;
      continue;
    }
    ++refused;
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument) << job.status();
    const std::string message(job.status().message());
    EXPECT_TRUE(message.rfind("prompt", 0) == 0 || message.rfind("sampling", 0) == 0) << message;
  }
  EXPECT_GT(ok, 10);  // most random requests have some field wrong
  EXPECT_GT(refused, 1000);
}

TEST_F(ValidationTest, EveryBadSamplingFieldIsNamed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto with = [&](auto set) {
    v1::GenerateRequest r = Ids({5, 6});
    set(*r.mutable_sampling());
    return ValidateGenerate(r, shakespeare()).status();
  };
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_max_tokens(0); }), "sampling.max_tokens"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_temperature(-0.5f); }), "sampling.temperature"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_temperature(nan); }), "sampling.temperature"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_temperature(inf); }), "sampling.temperature"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_top_p(0.0f); }), "sampling.top_p"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_top_p(1.5f); }), "sampling.top_p"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_top_p(nan); }), "sampling.top_p"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_top_k(-1); }), "sampling.top_k"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_logprobs(21); }), "sampling.logprobs"));
  EXPECT_TRUE(with([](auto& s) { s.set_logprobs(20); }).ok());
  EXPECT_TRUE(NamesField(with([](auto& s) { s.add_stop("ok"); s.add_stop(""); }), "sampling.stop[1]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.add_stop_token_ids(4096); }), "sampling.stop_token_ids[0]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.add_allowed_token_ids(1); s.add_allowed_token_ids(-1); }),
                         "sampling.allowed_token_ids[1]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_truncate_prompt_tokens(0); }), "sampling.truncate_prompt_tokens"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.add_stop(std::string(2000, 'a')); }), "sampling.stop[0]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { for (int i = 0; i < 65; ++i) s.add_stop("x"); }), "sampling.stop"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_min_p(-0.1f); }), "sampling.min_p"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_min_p(nan); }), "sampling.min_p"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_min_p(1.01f); }), "sampling.min_p"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_repetition_penalty(0.0f); }), "sampling.repetition_penalty"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_repetition_penalty(inf); }), "sampling.repetition_penalty"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_presence_penalty(2.5f); }), "sampling.presence_penalty"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { s.set_frequency_penalty(nan); }), "sampling.frequency_penalty"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_frequency_penalty(-3.0f); }), "sampling.frequency_penalty"));
  const absl::Status min_tokens = with([](auto& s) { s.set_max_tokens(4); s.set_min_tokens(5); });
  EXPECT_TRUE(NamesField(min_tokens, "sampling.min_tokens"));
  EXPECT_NE(min_tokens.message().find("exceeds max_tokens (4)"), std::string::npos) << min_tokens;
  EXPECT_TRUE(with([](auto& s) { s.set_max_tokens(5); s.set_min_tokens(5); s.set_min_p(1.0f); }).ok());
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_n(0); }), "sampling.n"));
  EXPECT_TRUE(NamesField(with([](auto& s) { s.set_n(65); }), "sampling.n"));
  EXPECT_TRUE(with([](auto& s) { s.set_n(64); }).ok());
  EXPECT_TRUE(NamesField(with([](auto& s) { (*s.mutable_logit_bias())[2048] = 1.0f; }), "sampling.logit_bias[2048]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { (*s.mutable_logit_bias())[-1] = 1.0f; }), "sampling.logit_bias[-1]"));
  EXPECT_TRUE(NamesField(with([&](auto& s) { (*s.mutable_logit_bias())[3] = nan; }), "sampling.logit_bias[3]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { (*s.mutable_logit_bias())[3] = -100.5f; }), "sampling.logit_bias[3]"));
  EXPECT_TRUE(NamesField(with([](auto& s) { for (int i = 0; i < 1025; ++i) (*s.mutable_logit_bias())[i] = 1.0f; }),
                         "sampling.logit_bias"));
  EXPECT_TRUE(with([](auto& s) { (*s.mutable_logit_bias())[3] = 100.0f; }).ok());
}

TEST_F(ValidationTest, CompletionIOfNSamplesWithSeedPlusI) {
  v1::GenerateRequest r = Ids({5, 6});
  r.mutable_sampling()->set_n(3);
  r.mutable_sampling()->set_seed(40);
  r.mutable_sampling()->set_temperature(0.7f);
  absl::StatusOr<GenerateJob> job = ValidateGenerate(r, shakespeare());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->n, 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    const v1::Assign a = job->CompletionAssign(i);
    EXPECT_EQ(a.seed(), 40u + i);
    EXPECT_EQ(a.temperature(), 0.7f);
    EXPECT_EQ(a.prompt_size(), 2);
  }
}

TEST_F(ValidationTest, PromptAndMaxTokensMustFitTheContext) {
  const int64_t context = shakespeare_config_->max_position_embeddings;  // 4096
  v1::GenerateRequest fits = Ids(std::vector<int32_t>(context - 10, 5));
  fits.mutable_sampling()->set_max_tokens(10);
  EXPECT_TRUE(ValidateGenerate(fits, shakespeare()).ok());
  fits.mutable_sampling()->set_max_tokens(11);
  const absl::Status over = ValidateGenerate(fits, shakespeare()).status();
  EXPECT_TRUE(NamesField(over, "sampling.max_tokens"));
  EXPECT_NE(over.message().find(std::to_string(context)), std::string::npos) << over;
  EXPECT_TRUE(NamesField(ValidateGenerate(Ids(std::vector<int32_t>(context, 5)), shakespeare()).status(), "prompt"));
}

// Text pairs split as lm-evaluation-harness's _encode_pair does: the whole string encoded once,
// the continuation being what follows the context's own tokens; trailing context whitespace
// belongs to the continuation. Token-id parts are taken as they are.
TEST_F(ValidationTest, ScoreItemsSplitTextPairsLikeLmEvaluationHarness) {
  v1::ScoreRequest r;
  auto add_text = [&](const std::string& context, const std::string& continuation) {
    v1::ScoreItem* item = r.add_items();
    item->mutable_context()->set_text(context);
    item->mutable_continuation()->set_text(continuation);
  };
  add_text("ROMEO:", " I say");
  add_text("ROMEO:", "\nThen, I say");
  add_text("ROMEO: ", "I say");  // trailing whitespace moves to the continuation
  v1::ScoreItem* ids = r.add_items();
  ids->mutable_context()->mutable_token_ids()->add_ids(7);
  ids->mutable_continuation()->mutable_token_ids()->add_ids(8);
  absl::StatusOr<std::vector<ScoreJob>> jobs = ValidateScore(r, shakespeare());
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 4u);
  const TextCodec& tok = **codec_;
  const int64_t context_len = static_cast<int64_t>(tok.Encode("ROMEO:").size());
  EXPECT_EQ((*jobs)[0].tokens, tok.Encode("ROMEO: I say"));
  EXPECT_EQ((*jobs)[0].context_tokens, context_len);
  // No word-initial piece is invented for a continuation that starts mid-text.
  EXPECT_EQ((*jobs)[1].tokens, tok.Encode("ROMEO:\nThen, I say"));
  EXPECT_EQ((*jobs)[1].context_tokens, context_len);
  EXPECT_EQ((*jobs)[2].tokens, (*jobs)[0].tokens);
  EXPECT_EQ((*jobs)[2].context_tokens, context_len);
  EXPECT_EQ((*jobs)[3].tokens, std::vector<int32_t>({7, 8}));
  EXPECT_EQ((*jobs)[3].context_tokens, 1);
}

TEST_F(ValidationTest, EveryBadScoreFieldIsNamed) {
  v1::ScoreRequest empty;
  EXPECT_TRUE(NamesField(ValidateScore(empty, shakespeare()).status(), "items"));

  auto one = [](std::vector<int32_t> context, std::vector<int32_t> continuation) {
    v1::ScoreRequest r;
    v1::ScoreItem* it = r.add_items();
    it->mutable_context()->mutable_token_ids()->mutable_ids()->Assign(context.begin(), context.end());
    it->mutable_continuation()->mutable_token_ids()->mutable_ids()->Assign(continuation.begin(), continuation.end());
    return r;
  };
  EXPECT_TRUE(NamesField(ValidateScore(one({}, {5}), shakespeare()).status(), "items[0].context"));
  EXPECT_TRUE(NamesField(ValidateScore(one({5}, {}), shakespeare()).status(), "items[0].continuation.token_ids"));
  EXPECT_TRUE(NamesField(ValidateScore(one({5}, {9999}), shakespeare()).status(),
                         "items[0].continuation.token_ids.ids[0]"));
  v1::ScoreRequest second = one({5}, {6});
  second.add_items()->mutable_context()->mutable_token_ids()->add_ids(5);  // no continuation
  EXPECT_TRUE(NamesField(ValidateScore(second, shakespeare()).status(), "items[1].continuation"));
  v1::ScoreRequest empty_text = one({5}, {6});
  empty_text.mutable_items(0)->mutable_continuation()->set_text("");
  EXPECT_TRUE(NamesField(ValidateScore(empty_text, shakespeare()).status(), "items[0].continuation.text"));
  const int64_t context = shakespeare_config_->max_position_embeddings;
  EXPECT_TRUE(NamesField(ValidateScore(one(std::vector<int32_t>(context, 5), {6}), shakespeare()).status(),
                         "items[0] (context + continuation)"));
  v1::ScoreRequest text_on_tiny;
  text_on_tiny.add_items()->mutable_context()->set_text("a");
  text_on_tiny.mutable_items(0)->mutable_continuation()->mutable_token_ids()->add_ids(3);
  EXPECT_TRUE(NamesField(ValidateScore(text_on_tiny, tiny()).status(), "items[0].context.text"));
}

TEST_F(ValidationTest, ScoreRollingFields) {
  v1::ScoreRollingRequest empty;
  EXPECT_TRUE(NamesField(ValidateScoreRolling(empty, shakespeare()).status(), "texts"));
  v1::ScoreRollingRequest r;
  r.add_texts()->set_text("ROMEO:");
  r.add_texts()->set_text("");
  EXPECT_TRUE(NamesField(ValidateScoreRolling(r, shakespeare()).status(), "texts[1].text"));
  r.mutable_texts(1)->set_text("JULIET:");
  absl::StatusOr<std::vector<RollingText>> texts = ValidateScoreRolling(r, shakespeare());
  ASSERT_TRUE(texts.ok()) << texts.status();
  EXPECT_EQ((*texts)[0].ids, (*codec_)->Encode("ROMEO:"));
  EXPECT_EQ((*texts)[1].ids, (*codec_)->Encode("JULIET:"));
  EXPECT_EQ((*texts)[1].windows.size(), RollingWindows(static_cast<int64_t>((*texts)[1].ids.size()), shakespeare().context()).size());
  r.set_top_logprobs(20);
  EXPECT_TRUE(ValidateScoreRolling(r, shakespeare()).ok());
  r.set_top_logprobs(21);
  EXPECT_TRUE(NamesField(ValidateScoreRolling(r, shakespeare()).status(), "top_logprobs"));
}

// Texts are encoded one by one and their windows counted as they come: the first text that takes
// the count past the queue is refused, before the texts after it are encoded (an empty text after
// it, an error of its own, is not reached); at the queue's size exactly they are served.
TEST_F(ValidationTest, ScoreRollingCountsWindowsTextByText) {
  const RequestModel m = shakespeare();
  v1::ScoreRollingRequest r;
  std::vector<int32_t> ids(static_cast<size_t>(2 * m.context()), 5);
  r.add_texts()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  r.add_texts()->set_text("ROMEO:");
  const int64_t first = static_cast<int64_t>(RollingWindows(2 * m.context(), m.context()).size());
  const int64_t both = first + static_cast<int64_t>(RollingWindows(static_cast<int64_t>((*codec_)->Encode("ROMEO:").size()), m.context()).size());
  ASSERT_EQ(first, 3);
  ASSERT_EQ(both, 4);
  EXPECT_TRUE(ValidateScoreRolling(r, m, both).ok());
  const absl::Status last = ValidateScoreRolling(r, m, both - 1).status();
  EXPECT_TRUE(NamesField(last, "texts")) << last;
  EXPECT_TRUE(absl::StrContains(last.message(), "texts: 4 sequences (rolling windows of texts[0..1]) exceed the coordinator's queue of 3 (--max-waiting)")) << last;
  r.add_texts()->set_text("");  // would be refused as texts[2].text, were it reached
  const absl::Status early = ValidateScoreRolling(r, m, first - 1).status();
  EXPECT_TRUE(absl::StrContains(early.message(), "texts: at least 3 sequences (rolling windows of texts[0..0]) exceed the coordinator's queue of 2")) << early;
  EXPECT_TRUE(NamesField(ValidateScoreRolling(r, m, both).status(), "texts[2].text"));
}

// The tokeniser answers' sizes, counted before they are built, are the sizes protobuf serialises.
TEST_F(ValidationTest, AnswerSizesAreTheSerialisedSizes) {
  const TextCodec& tok = **codec_;
  std::vector<TextSpan> spans;
  const std::string text = "ROMEO: But, soft! what light \xe6\x97\xa5 <s> through yonder window breaks?\n\n";
  std::vector<int32_t> ids = tok.EncodeWithSpecialTokens(text, &spans);
  ids.push_back(-1);  // a negative int32 takes 10 bytes
  spans.push_back({0, 0});
  spans.push_back({size_t{300} << 20, (size_t{300} << 20) + 4});  // 5-byte varints
  ids.push_back(7);
  v1::TokenizeResponse t;
  t.mutable_token_ids()->Assign(ids.begin(), ids.end());
  EXPECT_EQ(TokenIdsBytes(ids), t.ByteSizeLong());
  for (const TextSpan& s : spans) {
    v1::ByteSpan* o = t.add_offsets();
    o->set_start(static_cast<uint32_t>(s.begin));
    o->set_end(static_cast<uint32_t>(s.end));
  }
  EXPECT_EQ(TokenIdsBytes(ids) + OffsetsBytes(spans), t.ByteSizeLong());
  EXPECT_EQ(TokenIdsBytes({}) + OffsetsBytes({}), v1::TokenizeResponse().ByteSizeLong());
  v1::DetokenizeResponse d;
  size_t bytes = 0;
  for (const std::string& piece : {std::string(), std::string(200, 'x'), tok.Piece(5)}) {
    d.add_pieces(piece);
    bytes += StringFieldBytes(piece.size());
  }
  d.set_text(std::string(70000, 'y'));
  EXPECT_EQ(StringFieldBytes(70000) + bytes, d.ByteSizeLong());
  EXPECT_TRUE(CheckAnswerFits(kMaxMessageBytes, "f", "w", "a").ok());
  const absl::Status over = CheckAnswerFits(kMaxMessageBytes + 1, "return_pieces", "the pieces", "send fewer");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(over.message(), "return_pieces: the pieces take 268435457 bytes, more than the 268435456 (256 MiB) the "
                            "coordinator sends in one message; send fewer");
}

// Detokenize sizes its text from DecodedSizeBound before decoding: never less than Decode gives,
// whichever ids (every piece alone and after text, byte pieces that form no character), skipping
// special tokens or not.
TEST_F(ValidationTest, DecodedSizeBoundIsAtLeastTheDecodedSize) {
  const TextCodec& tok = **codec_;
  std::vector<int32_t> all;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    for (const std::vector<int32_t>& ids : {std::vector<int32_t>{id}, std::vector<int32_t>{id, id, 100}, std::vector<int32_t>{100, id}}) {
      for (bool skip : {true, false}) EXPECT_LE(tok.Decode(ids, skip).size(), tok.DecodedSizeBound(ids)) << id;
    }
    all.push_back(id);
  }
  std::mt19937 rng(7);
  std::shuffle(all.begin(), all.end(), rng);
  for (bool skip : {true, false}) EXPECT_LE(tok.Decode(all, skip).size(), tok.DecodedSizeBound(all));
}

TEST_F(ValidationTest, TokenizeHonoursAddBos) {
  const TextCodec& tok = **codec_;
  std::vector<int32_t> bare = tok.Encode("ROMEO:");  // this tokenizer adds no BOS by default
  ASSERT_FALSE(tok.add_bos());
  EXPECT_EQ(Tokenize(tok, "ROMEO:", std::nullopt), bare);
  std::vector<int32_t> with_bos = bare;
  with_bos.insert(with_bos.begin(), tok.bos_id());
  EXPECT_EQ(Tokenize(tok, "ROMEO:", true), with_bos);
  EXPECT_EQ(Tokenize(tok, "ROMEO:", false), bare);
}

TEST(ScoreWindowsTest, HandWorkedExample) {
  // 10 tokens, context 4: [0,4) scores 1..3; [3,7) scores 4..6; [6,10) scores 7..9.
  const std::vector<ScoreWindow> w = RollingWindows(10, 4);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].begin, 0);
  EXPECT_EQ(w[0].end, 4);
  EXPECT_EQ(w[0].first_target, 1);
  EXPECT_EQ(w[1].begin, 3);
  EXPECT_EQ(w[1].end, 7);
  EXPECT_EQ(w[1].first_target, 4);
  EXPECT_EQ(w[2].begin, 6);
  EXPECT_EQ(w[2].end, 10);
  EXPECT_EQ(w[2].first_target, 7);
  EXPECT_TRUE(RollingWindows(1, 4).empty());
  ASSERT_EQ(RollingWindows(3, 4).size(), 1u);
}

TEST(ScoreWindowsTest, EveryTokenButTheFirstIsScoredOnceWithContext) {
  for (int64_t len : {2, 3, 5, 8}) {
    for (int64_t n = 0; n <= 40; ++n) {
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (const ScoreWindow& w : RollingWindows(n, len)) {
        ASSERT_LE(w.end - w.begin, len);
        ASSERT_GT(w.first_target, w.begin);  // every target has context in its window
        ASSERT_GE(w.begin, 0);
        for (int64_t t = w.first_target; t < w.end; ++t) ++seen[static_cast<size_t>(t)];
      }
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(seen[static_cast<size_t>(t)], t == 0 ? 0 : 1) << n << " " << t;
    }
  }
}

}  // namespace
}  // namespace moe
