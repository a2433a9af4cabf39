// The cases of tests/data/golden/tiny/penalties.json (make_penalties_golden.py: transformers'
// greedy tokens under penalties), set on a request the same way wherever a test sends them.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

namespace moe::testing_ref {

// Sets a case's penalty, min_tokens, stop-token and logit-bias fields on `p`: a moe.v1.Assign or a
// moe.v1.SamplingParams, which name them alike. Fields the case leaves out stay as they are.
template <class Params>
void SetPenaltyCaseFields(const nlohmann::json& c, Params& p) {
  if (c.contains("repetition_penalty")) p.set_repetition_penalty(c["repetition_penalty"].get<float>());
  if (c.contains("frequency_penalty")) p.set_frequency_penalty(c["frequency_penalty"].get<float>());
  if (c.contains("presence_penalty")) p.set_presence_penalty(c["presence_penalty"].get<float>());
  if (c.contains("min_tokens")) p.set_min_tokens(c["min_tokens"].get<uint32_t>());
  if (c.contains("stop_token_ids")) {
    for (const nlohmann::json& id : c["stop_token_ids"]) p.add_stop_token_ids(id.get<int32_t>());
  }
  if (c.contains("logit_bias")) {  // [[id, bias], ...]
    for (const nlohmann::json& b : c["logit_bias"]) (*p.mutable_logit_bias())[b[0].get<int32_t>()] = b[1].get<float>();
  }
}

}  // namespace moe::testing_ref
