// moe-cli: generate or score with a Mixtral-family model folder. Started plainly it runs in one
// process; started under `mpirun -np N` it runs as an N-rank expert-parallel job (experts sharded
// by the placement plan, sequences spread over the ranks) and rank 0 prints the answer.
//
// Exit status: 0 success, 1 the model or a step failed, 2 bad command line.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <mpi.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "coordinator/placement.h"
#include "worker/cli/cli_args.h"
#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/comm/mpi_launch.h"
#include "worker/engine.h"
#include "worker/generation.h"
#include "worker/tokenizer.h"

#ifndef MOE_DEFAULT_MODEL_DIR
#define MOE_DEFAULT_MODEL_DIR "models/shakespeare-moe"
#endif

namespace moe {
namespace {

using nlohmann::json;

// True on every rank when any rank passes `failed`; each failing rank prints its own message.
bool AnyRankFailed(Communicator& comm, const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "moe-cli [rank %d]: %s\n", comm.rank(), std::string(s.message()).c_str());
  std::vector<int64_t> flag = {s.ok() ? 0 : 1};
  comm.AllReduceSum(flag);
  return flag[0] > 0;
}

// The sequences of the command line, as token ids.
absl::StatusOr<std::vector<std::vector<int32_t>>> InputIds(const CliOptions& o, const Tokenizer* tok,
                                                           const ModelConfig& c) {
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < o.inputs.size(); ++i) {
    const CliOptions::Input& in = o.inputs[i];
    if (in.is_text) {
      if (!tok) {
        return absl::FailedPreconditionError(absl::StrCat(o.model_dir, " has no tokenizer.json or tokenizer.model: use --token-ids"));
      }
      seqs.push_back(tok->Encode(in.text));
      if (seqs.back().empty()) return absl::InvalidArgumentError(absl::StrCat("input ", i, ": encodes to no tokens"));
    } else {
      seqs.push_back(in.token_ids);
    }
    for (size_t t = 0; t < seqs.back().size(); ++t) {
      const int32_t id = seqs.back()[t];
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("input ", i, ": token id ", id, " at index ", t,
                                                       " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t need = static_cast<int64_t>(seqs.back().size()) + (o.command == "generate" ? o.max_tokens : 0);
    if (need > c.context_length()) {
      return absl::InvalidArgumentError(absl::StrCat("input ", i, ": ", seqs.back().size(), " prompt tokens + ",
                                                     o.max_tokens, " max tokens exceed the context of ",
                                                     c.context_length()));
    }
  }
  return seqs;
}

std::string TextOf(const Tokenizer* tok, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated) {
  if (!tok) return "";
  StreamingDetokenizer d(*tok, prompt);
  std::string s;
  for (int32_t id : generated) s += d.Push(id);
  return s + d.Flush();
}

int Run(const std::vector<std::string>& args, Communicator& comm) {
  const bool root = comm.rank() == 0;
  absl::StatusOr<CliOptions> parsed = ParseCliArgs(args, MOE_DEFAULT_MODEL_DIR);
  if (!parsed.ok()) {
    if (root) std::fprintf(stderr, "moe-cli: %s\n%s", std::string(parsed.status().message()).c_str(), CliUsage().c_str());
    return 2;
  }
  const CliOptions& o = *parsed;
  if (o.command == "help") {
    if (root) std::fputs(CliUsage().c_str(), stdout);
    return 0;
  }

  absl::StatusOr<ModelConfig> config = ModelConfig::FromModelDir(o.model_dir);
  if (!config.ok()) {
    if (root) std::fprintf(stderr, "moe-cli: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<Tokenizer> tok;
  if (absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(o.model_dir); t.ok()) {
    tok = std::move(*t);
  } else if (!absl::IsNotFound(t.status())) {  // a tokenizer that is there but cannot serve
    if (root) std::fprintf(stderr, "moe-cli: %s\n", std::string(t.status().message()).c_str());
    return 1;
  }
  if (tok != nullptr) {
    if (absl::Status fits = CheckTokenizerVocabulary(tok->vocab_size(), *config, o.model_dir); !fits.ok()) {
      if (root) std::fprintf(stderr, "moe-cli: %s\n", std::string(fits.message()).c_str());
      return 1;
    }
  }
  absl::StatusOr<std::vector<std::vector<int32_t>>> seqs = InputIds(o, tok.get(), *config);
  if (!seqs.ok()) {
    if (root) std::fprintf(stderr, "moe-cli: %s\n", std::string(seqs.status().message()).c_str());
    return 2;
  }

  // The placement plan is computed in one place (rank 0) and handed to the ranks as data.
  std::string plan_json;
  if (root) plan_json = ValueOrThrow(PlacementPlan::Make(config->num_layers, config->num_experts, comm.size())).ToJson().dump();
  comm.Broadcast(plan_json, 0);
  absl::StatusOr<PlacementPlan> plan = PlacementPlan::FromJson(json::parse(plan_json));
  if (AnyRankFailed(comm, plan.status())) return 1;

  EngineOptions eo;
  eo.kv_block_size = o.kv_block_size;
  eo.verbose = o.verbose;
  eo.kv_tokens = 0;
  for (const auto& s : *seqs) {
    eo.kv_tokens += static_cast<int64_t>(s.size()) + (o.command == "generate" ? o.max_tokens : 0) + o.kv_block_size;
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Load(o.model_dir, comm, *plan, eo);
  if (AnyRankFailed(comm, engine.status())) return 1;
  if (o.verbose) {
    std::fprintf(stderr, "[rank %d] loaded %.1f MB of weights\n", comm.rank(), (*engine)->weight_bytes() / 1e6);
  }

  // Sequences are spread round-robin: input i runs on rank i % size (some ranks may have none).
  std::vector<size_t> mine;
  for (size_t i = 0; i < seqs->size(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(comm.size())) == comm.rank()) mine.push_back(i);
  }
  json local = json::array();
  absl::Status status;
  if (o.command == "generate") {
    std::vector<GenerateRequest> reqs;
    // The tokenizer's EOS ends generation where config.json names another end id (a fine-tune's
    // <|im_end|>), as the server does (TokenizerEosBeyondConfig).
    std::vector<int32_t> stop_ids;
    if (tok && tok->eos_id() >= 0 && !config->is_eos(tok->eos_id())) stop_ids.push_back(tok->eos_id());
    for (size_t i : mine) reqs.push_back({(*seqs)[i], o.max_tokens, o.sampling, o.ignore_eos, stop_ids});
    // One text prompt in plain-text mode on rank 0: stream the text as it is generated.
    const bool stream = root && !o.json && tok && seqs->size() == 1 && o.inputs[0].is_text;
    std::unique_ptr<StreamingDetokenizer> detok;
    if (stream) {
      std::cout << o.inputs[0].text << std::flush;
      detok = std::make_unique<StreamingDetokenizer>(*tok, (*seqs)[0]);
    }
    // The end id that stops a sequence stays out of its text, as the server leaves it out.
    auto on_token = [&](size_t i, int32_t id) {
      if (detok && !EndsGeneration(*config, reqs[i], id)) std::cout << detok->Push(id) << std::flush;
    };
    auto res = GenerateAll(**engine, reqs, on_token);
    status = res.status();
    if (res.ok()) {
      for (size_t j = 0; j < mine.size(); ++j) {
        const std::vector<int32_t>& ids = (*res)[j].tokens;
        const bool stopped = (*res)[j].finish == FinishReason::kStop;  // its last id ended it
        local.push_back({{"index", mine[j]},
                         {"token_ids", ids},
                         {"text_tokens", stopped ? ids.size() - 1 : ids.size()},
                         {"finish_reason", FinishReasonName((*res)[j].finish)}});
      }
    }
    if (detok) std::cout << detok->Flush() << "\n" << std::flush;
  } else {
    std::vector<std::vector<int32_t>> mine_seqs;
    for (size_t i : mine) mine_seqs.push_back((*seqs)[i]);
    auto res = ScoreAll(**engine, mine_seqs);
    status = res.status();
    if (res.ok()) {
      for (size_t j = 0; j < mine.size(); ++j) {
        json lp = json::array();
        for (float x : (*res)[j].logprobs) lp.push_back(std::isnan(x) ? json(nullptr) : json(x));
        local.push_back({{"index", mine[j]}, {"logprobs", lp}});
      }
    }
  }
  if (!status.ok()) {
    // Every rank saw the failed step; rank 0 reports it.
    if (root) std::fprintf(stderr, "moe-cli: %s\n", std::string(status.message()).c_str());
    return 1;
  }

  std::vector<std::string> gathered = comm.Gather(local.dump(), 0);
  if (!root) return 0;
  std::vector<json> by_index(seqs->size());
  for (const std::string& part : gathered) {
    for (json& r : json::parse(part)) {
      const size_t index = r["index"].get<size_t>();  // read before r is moved from
      by_index[index] = std::move(r);
    }
  }
  json results = json::array();
  for (size_t i = 0; i < seqs->size(); ++i) {
    json& r = by_index[i];
    json out;
    if (o.command == "generate") {
      const auto ids = r["token_ids"].get<std::vector<int32_t>>();
      const std::vector<int32_t> text_ids(ids.begin(), ids.begin() + r["text_tokens"].get<size_t>());
      out = {{"token_ids", ids}, {"text", TextOf(tok.get(), (*seqs)[i], text_ids)}, {"finish_reason", r["finish_reason"]}};
    } else {
      out = {{"token_ids", (*seqs)[i]}, {"logprobs", r["logprobs"]}};
    }
    results.push_back(std::move(out));
  }
  if (o.json) {
    json last = results.size() == 1 ? results[0] : json{{"results", results}};
    if (o.stats) last["load_stats"] = (*engine)->load_stats().ToJson();
    std::cout << last.dump() << "\n";
  } else if (o.command == "generate" && !(tok && seqs->size() == 1 && o.inputs[0].is_text)) {
    for (size_t i = 0; i < results.size(); ++i) {
      const json& r = results[i];
      if (tok) {
        std::cout << tok->Decode((*seqs)[i]) << r["text"].get<std::string>() << "\n";
      } else {
        std::cout << r["token_ids"].dump() << "\n";
      }
      std::cout << "[finish_reason: " << r["finish_reason"].get<std::string>() << "]\n";
    }
  } else if (o.command == "score") {
    for (size_t i = 0; i < results.size(); ++i) {
      double sum = 0;
      const auto& ids = (*seqs)[i];
      for (size_t t = 0; t < ids.size(); ++t) {
        const json& lp = results[i]["logprobs"][t];
        std::cout << ids[t] << "\t" << (lp.is_null() ? std::string("-") : std::to_string(lp.get<double>())) << "\n";
        if (!lp.is_null()) sum += lp.get<double>();
      }
      std::cout << "sum_logprob\t" << sum << "\n";
    }
  }
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return moe::RunAsJob(argc, argv, "moe-cli", [&](moe::Communicator& comm) { return moe::Run(args, comm); });
}
