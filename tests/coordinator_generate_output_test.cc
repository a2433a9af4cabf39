// The public stream built from a worker's Tokens: with the model's real tokenizer and its
// recorded greedy continuations (samples.json, produced by the Python tooling), the text deltas
// add up to the recorded text, and a stop string cuts it where std::string::find says, however
// the tokens are grouped into messages.
#include "coordinator/generate_output.h"

#include <gtest/gtest.h>

#include <tuple>

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

namespace moe {
namespace {

const std::string kShakespeare = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";

struct Sample {
  std::string prompt;
  std::vector<int32_t> prompt_ids, greedy_ids;
  std::string greedy_text;  // prompt + generated text
};

std::vector<Sample> LoadSamples() {
  std::ifstream f(kShakespeare + "/samples.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  std::vector<Sample> out;
  for (const auto& s : j["greedy_samples"]) {
    out.push_back({s["prompt"], s["prompt_ids"], s["greedy_ids"], s["greedy_text"]});
  }
  return out;
}

// The Tokens message carrying ids[i, i + group) (fewer at the end), each with logprob `logprob`.
v1::Tokens TokensAt(const std::vector<int32_t>& ids, size_t i, size_t group, float logprob) {
  v1::Tokens t;
  for (size_t k = i; k < std::min(i + group, ids.size()); ++k) {
    t.add_token_ids(ids[k]);
    t.add_logprobs(logprob);
  }
  return t;
}

class GenerateOutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = ValueOrThrow(ModelConfig::FromModelDir(kShakespeare));
    codec_ = ValueOrThrow(LoadTextCodec(kShakespeare));
    samples_ = LoadSamples();
    ASSERT_FALSE(samples_.empty());
  }

  GenerateJob Job(const Sample& s, std::vector<std::string> stop = {}, bool logprobs = false) {
    GenerateJob job;
    job.assign.mutable_prompt()->Assign(s.prompt_ids.begin(), s.prompt_ids.end());
    job.assign.set_max_tokens(static_cast<uint32_t>(s.greedy_ids.size()));
    job.stop = std::move(stop);
    job.want_logprobs = logprobs;
    return job;
  }

  // Feeds the sample's tokens `group` at a time; returns the concatenated text and whether a stop
  // sequence ended the stream (then the finish reason is STOP_SEQUENCE), plus the last message.
  struct Streamed {
    std::string text;
    std::vector<int32_t> ids;
    v1::GenerateResponse last;
  };
  // `end`: the worker's finish reason when no stop string ended it.
  Streamed Stream(const Sample& s, const GenerateJob& job, size_t group, v1::FinishReason end = v1::FINISH_REASON_LENGTH) {
    RequestModel model{config_, codec_.get()};
    GenerateOutput out(job, model, "r1");
    Streamed r;
    for (size_t i = 0; i < s.greedy_ids.size(); i += group) {
      const v1::Tokens t = TokensAt(s.greedy_ids, i, group, -0.5f);
      v1::GenerateResponse resp;
      absl::StatusOr<bool> stopped = out.AddTokens(t, resp);
      EXPECT_TRUE(stopped.ok()) << stopped.status();
      EXPECT_EQ(resp.request_id(), "r1");
      r.text += resp.text();
      r.ids.insert(r.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
      if (*stopped) {
        out.Finish(v1::FINISH_REASON_STOP_SEQUENCE, r.last);
        r.text += r.last.text();
        return r;
      }
    }
    out.Finish(end, r.last);
    r.text += r.last.text();
    return r;
  }

  ModelConfig config_;
  std::shared_ptr<const TextCodec> codec_;
  std::vector<Sample> samples_;
};

TEST_F(GenerateOutputTest, DeltasAddUpToTheRecordedText) {
  for (const Sample& s : samples_) {
    const std::string generated = s.greedy_text.substr(s.prompt.size());
    for (size_t group : {1, 3, 100}) {
      Streamed r = Stream(s, Job(s), group);
      EXPECT_EQ(r.text, generated) << "group " << group;
      EXPECT_EQ(r.ids, s.greedy_ids);
      EXPECT_EQ(r.last.finish_reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(r.last.usage().prompt_tokens(), s.prompt_ids.size());
      EXPECT_EQ(r.last.usage().completion_tokens(), s.greedy_ids.size());
    }
  }
}

// The worker's count of cached prompt tokens comes with a completion's first tokens: taken from
// those only (a sequence resumed on a new worker job reports again, for its longer context), at
// most the prompt's length.
TEST_F(GenerateOutputTest, CachedPromptTokensComeFromTheFirstTokensOnly) {
  const Sample& s = samples_.front();
  RequestModel model{config_, codec_.get()};
  const uint32_t prompt = static_cast<uint32_t>(s.prompt_ids.size());
  for (const auto& [first, later, want] : std::vector<std::tuple<uint32_t, uint32_t, uint32_t>>{
           {0, 16, 0}, {16, 32, std::min<uint32_t>(16, prompt)}, {prompt + 100, 0, prompt}}) {
    GenerateOutput out(Job(s), model, "r");
    v1::GenerateResponse resp;
    v1::Tokens a = TokensAt(s.greedy_ids, 0, 2, -1.0f), b = TokensAt(s.greedy_ids, 2, s.greedy_ids.size(), -1.0f);
    a.set_cached_prompt_tokens(first);
    b.set_cached_prompt_tokens(later);
    ASSERT_TRUE(out.AddTokens(a, resp).ok());
    ASSERT_TRUE(out.AddTokens(b, resp).ok());
    out.Finish(v1::FINISH_REASON_LENGTH, resp);
    EXPECT_EQ(resp.usage().cached_prompt_tokens(), want) << first << " then " << later;
  }
}

TEST_F(GenerateOutputTest, StopStringIsCutOutWhereverTheTokensSplitIt) {
  const Sample& s = samples_[0];
  const std::string generated = s.greedy_text.substr(s.prompt.size());
  // Stop strings that span token boundaries, found in the recorded text by plain find().
  for (const std::string& stop : {std::string("RICHARD"), std::string("not so"), std::string("\n\n"),
                                 std::string("I,\nTo")}) {
    const size_t at = generated.find(stop);
    ASSERT_NE(at, std::string::npos) << stop;
    for (size_t group : {1, 2, 5}) {
      Streamed r = Stream(s, Job(s, {stop, "never appears"}), group);
      EXPECT_EQ(r.text, generated.substr(0, at)) << "stop '" << stop << "' group " << group;
      EXPECT_EQ(r.last.finish_reason(), v1::FINISH_REASON_STOP_SEQUENCE);
      EXPECT_EQ(r.last.stop_string(), stop) << "vLLM's stop_reason";
      // The tokens up to the one that completed the stop string were sent, none after it.
      EXPECT_LT(r.ids.size(), s.greedy_ids.size());
      EXPECT_EQ(r.last.usage().completion_tokens(), r.ids.size());
    }
  }
}

// include_stop_str_in_output (vLLM's): the text runs to the end of the stop string.
TEST_F(GenerateOutputTest, IncludeStopStrKeepsTheStopString) {
  const Sample& s = samples_[0];
  const std::string generated = s.greedy_text.substr(s.prompt.size());
  for (const std::string& stop : {std::string("not so"), std::string("I,\nTo")}) {
    const size_t at = generated.find(stop);
    ASSERT_NE(at, std::string::npos) << stop;
    GenerateJob job = Job(s, {stop});
    job.include_stop = true;
    for (size_t group : {1, 4}) {
      Streamed r = Stream(s, job, group);
      EXPECT_EQ(r.text, generated.substr(0, at + stop.size())) << "stop '" << stop << "' group " << group;
      EXPECT_EQ(r.last.finish_reason(), v1::FINISH_REASON_STOP_SEQUENCE);
    }
  }
}

// The stop token id that ends the output (the worker sends nothing after it) adds no text, as
// vLLM leaves it out; its id is in token_ids, and with include_stop_str_in_output its text is kept.
// References: the text of the tokens before it, and of those and it.
TEST_F(GenerateOutputTest, TheStopTokenIdsTextIsLeftOutUnlessIncluded) {
  const Sample& s = samples_[0];
  int checked = 0;
  for (size_t k : {5, 17, 30}) {
    const int32_t stop_id = s.greedy_ids[k];
    if (std::find(s.greedy_ids.begin(), s.greedy_ids.begin() + static_cast<std::ptrdiff_t>(k), stop_id) !=
        s.greedy_ids.begin() + static_cast<std::ptrdiff_t>(k)) {
      continue;  // not its first occurrence: the worker would have stopped earlier
    }
    Sample upto = s, with = s;
    upto.greedy_ids.resize(k);
    with.greedy_ids.resize(k + 1);
    const std::string before = Stream(upto, Job(upto), 1).text, through = Stream(with, Job(with), 1).text;
    ASSERT_NE(before, through) << "token " << k << " has text";
    for (bool include : {false, true}) {
      GenerateJob job = Job(with);
      job.assign.add_stop_token_ids(stop_id);
      job.include_stop = include;
      for (size_t group : {1, 3}) {
        Streamed r = Stream(with, job, group, v1::FINISH_REASON_STOP);
        EXPECT_EQ(r.text, include ? through : before) << "token " << k << " group " << group;
        EXPECT_EQ(r.ids, with.greedy_ids);
        EXPECT_EQ(r.last.stop_token_id(), stop_id) << "vLLM's stop_reason";
      }
      // The same token as an end id of the model's other than the tokenizer's EOS (a
      // generation_config.json's): vLLM moves those into stop_token_ids, so it is named as the
      // stop reason; its text is left out all the same.
      ModelConfig eos_config = config_;
      eos_config.eos_token_ids = {config_.eos_token_ids.at(0), stop_id};
      RequestModel model{eos_config, codec_.get()};
      GenerateJob eos_job = Job(with);
      eos_job.include_stop = include;
      GenerateOutput out(eos_job, model, "r");
      v1::GenerateResponse resp, last;
      ASSERT_TRUE(out.AddTokens(TokensAt(with.greedy_ids, 0, with.greedy_ids.size(), -1.0f), resp).ok());
      out.Finish(v1::FINISH_REASON_STOP, last);
      EXPECT_EQ(resp.text() + last.text(), include ? through : before);
      EXPECT_EQ(last.stop_token_id(), stop_id);
    }
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// Without a tokenizer (a model folder without one, ids in and out) vLLM has no EOS and moves every
// end id of the model into stop_token_ids, so a finish at config.json's first end id names it as
// the stop reason; with the tokenizer, whose EOS it is, none.
TEST_F(GenerateOutputTest, WithoutATokenizerEveryEndIdIsTheStopReason) {
  Sample s = samples_[0];
  const int32_t eos = config_.eos_token_ids.at(0);
  ASSERT_EQ(codec_->eos_id(), eos);
  s.greedy_ids.resize(4);
  s.greedy_ids.push_back(eos);
  for (const TextCodec* codec : {static_cast<const TextCodec*>(nullptr), codec_.get()}) {
    RequestModel model{config_, codec};
    GenerateOutput out(Job(s), model, "r");
    v1::GenerateResponse resp, last;
    ASSERT_TRUE(out.AddTokens(TokensAt(s.greedy_ids, 0, s.greedy_ids.size(), -1.0f), resp).ok());
    out.Finish(v1::FINISH_REASON_STOP, last);
    if (codec == nullptr) {
      EXPECT_EQ(last.stop_token_id(), eos);
    } else {
      EXPECT_EQ(last.stop_reason_case(), v1::GenerateResponse::STOP_REASON_NOT_SET);
    }
    EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_STOP);
  }
}

// skip_special_tokens false (vLLM's): a control token generated shows as its piece ("<s>"), in the
// text and in its logprob's text; the EOS that ends the output only with include_stop_str_in_output.
// Skipped (the default), neither adds text. Reference: the recorded text, cut where the first
// tokens' text ends.
TEST_F(GenerateOutputTest, SpecialTokensShowUnlessSkipped) {
  Sample s = samples_[0];
  const std::string generated = s.greedy_text.substr(s.prompt.size());
  Sample head = s;
  head.greedy_ids.resize(4);
  const std::string before = Stream(head, Job(head), 1).text;
  ASSERT_TRUE(generated.starts_with(before));
  const int32_t bos = codec_->bos_id(), eos = config_.eos_token_ids.at(0);
  const std::string bos_piece = codec_->Piece(bos), eos_piece = codec_->Piece(eos);
  ASSERT_EQ(bos_piece, "<s>");
  ASSERT_EQ(eos_piece, "</s>");
  s.greedy_ids.insert(s.greedy_ids.begin() + 4, bos);
  s.greedy_ids.push_back(eos);
  for (bool skip : {true, false}) {
    for (bool include : {false, true}) {
      GenerateJob job = Job(s, {}, /*logprobs=*/true);
      job.skip_special_tokens = skip;
      job.include_stop = include;
      const std::string want = skip ? generated
                                    : before + bos_piece + generated.substr(before.size()) + (include ? eos_piece : "");
      for (size_t group : {1, 3, 100}) {
        EXPECT_EQ(Stream(s, job, group, v1::FINISH_REASON_STOP).text, want)
            << "skip " << skip << " include " << include << " group " << group;
      }
      RequestModel model{config_, codec_.get()};
      GenerateOutput out(job, model, "r");
      v1::GenerateResponse resp;
      ASSERT_TRUE(out.AddTokens(TokensAt(s.greedy_ids, 0, s.greedy_ids.size(), -1.0f), resp).ok());
      ASSERT_EQ(resp.logprobs_size(), static_cast<int>(s.greedy_ids.size()));
      EXPECT_EQ(resp.logprobs(4).text(), skip ? "" : bos_piece);
      v1::GenerateResponse last;
      out.Finish(v1::FINISH_REASON_STOP, last);
      EXPECT_EQ(last.stop_reason_case(), v1::GenerateResponse::STOP_REASON_NOT_SET) << "the tokenizer's EOS names none, as vLLM";
    }
  }
}

// min_tokens (as vLLM): a stop string may not end in the text of the first min_tokens tokens, but
// may start there and end after it (vLLM looks a stop string's length back from the new text). The
// reference is plain find() on the recorded text: the first occurrence that ends past the text of
// the first min_tokens tokens, for every min_tokens up to past the first occurrence, so some cut an
// occurrence in two.
TEST_F(GenerateOutputTest, StopStringsMayNotEndInTheFirstMinTokens) {
  const Sample& s = samples_[0];
  const std::string generated = s.greedy_text.substr(s.prompt.size());
  int straddling = 0, checked = 0;
  for (const std::string& stop : {std::string("\n"), std::string("e"), std::string("RICHARD"), std::string("Then, I")}) {
    const size_t first = generated.find(stop);
    ASSERT_NE(first, std::string::npos) << stop;
    Sample head = s;
    for (size_t m = 0; m <= s.greedy_ids.size(); ++m) {
      head.greedy_ids.assign(s.greedy_ids.begin(), s.greedy_ids.begin() + static_cast<std::ptrdiff_t>(m));
      const std::string head_text = m == 0 ? std::string() : Stream(head, Job(head), 1).text;
      const size_t end_after = head_text.size();
      const size_t at = generated.find(stop, end_after >= stop.size() ? end_after - stop.size() + 1 : 0);
      const std::string want = at == std::string::npos ? generated : generated.substr(0, at);
      straddling += at != std::string::npos && at < end_after;
      GenerateJob job = Job(s, {stop});
      job.assign.set_min_tokens(static_cast<uint32_t>(m));
      for (size_t group : {1, 3}) {
        Streamed r = Stream(s, job, group);
        EXPECT_EQ(r.text, want) << "stop '" << stop << "' min_tokens " << m << " group " << group;
        EXPECT_EQ(r.last.finish_reason(), at == std::string::npos ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_STOP_SEQUENCE);
      }
      ++checked;
      if (end_after > first + stop.size() + 20) break;  // well past the first occurrence
    }
  }
  EXPECT_GT(checked, 20);
  EXPECT_GT(straddling, 0) << "no min_tokens cut an occurrence in two";
}

TEST_F(GenerateOutputTest, LogprobsCarryTheAlternativesText) {
  const Sample& s = samples_[0];
  RequestModel model{config_, codec_.get()};
  GenerateOutput out(Job(s, {}, /*logprobs=*/true), model, "r2");
  v1::Tokens t;
  t.add_token_ids(s.greedy_ids[1]);
  t.add_logprobs(-0.25f);
  v1::WorkerTopLogprob* alt = t.add_top()->add_alternatives();
  alt->set_token_id(s.greedy_ids[1]);
  alt->set_logprob(-0.25f);
  alt = t.mutable_top(0)->add_alternatives();
  alt->set_token_id(870);
  alt->set_logprob(-3.0f);
  v1::GenerateResponse resp;
  ASSERT_TRUE(out.AddTokens(t, resp).ok());
  ASSERT_EQ(resp.logprobs_size(), 1);
  EXPECT_EQ(resp.logprobs(0).token_id(), s.greedy_ids[1]);
  EXPECT_EQ(resp.logprobs(0).logprob(), -0.25f);
  ASSERT_EQ(resp.logprobs(0).top_size(), 2);
  EXPECT_EQ(resp.logprobs(0).top(1).token_id(), 870);
  EXPECT_EQ(resp.logprobs(0).top(1).text(), codec_->Decode(std::vector<int32_t>{870}));
  EXPECT_EQ(resp.logprobs(0).top(1).logprob(), -3.0f);
}

// Each token's logprob entry carries the text it added, so they add up to the recorded text
// however the tokens are grouped.
TEST_F(GenerateOutputTest, TokenTextsAddUpToTheCompletionText) {
  for (const Sample& s : samples_) {
    const std::string generated = s.greedy_text.substr(s.prompt.size());
    for (size_t group : {1, 4}) {
      RequestModel model{config_, codec_.get()};
      GenerateOutput out(Job(s, {}, /*logprobs=*/true), model, "r3");
      std::string joined;
      for (size_t i = 0; i < s.greedy_ids.size(); i += group) {
        const v1::Tokens t = TokensAt(s.greedy_ids, i, group, -1.0f);
        v1::GenerateResponse resp;
        ASSERT_TRUE(out.AddTokens(t, resp).ok());
        ASSERT_EQ(resp.logprobs_size(), resp.token_ids_size());
        for (const v1::TokenLogprob& lp : resp.logprobs()) joined += lp.text();
      }
      EXPECT_EQ(joined, generated) << "group " << group;
    }
  }
}

TEST_F(GenerateOutputTest, WorkerIdsOutsideTheVocabularyAreAnError) {
  RequestModel model{config_, codec_.get()};
  GenerateOutput out(Job(samples_[0]), model, "r3");
  v1::Tokens t;
  t.add_token_ids(5000);
  t.add_logprobs(0);
  v1::GenerateResponse resp;
  EXPECT_EQ(out.AddTokens(t, resp).status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace moe
